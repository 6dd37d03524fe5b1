"""Build a tiny random-init Llama-architecture model directory from a config and a real tokenizer.

Used by the CPU tests, the end-to-end artifact demonstration and the GPU throughput benchmark: the architecture,
vocabulary and special tokens are real (e.g. the full 128k Llama 3 vocabulary), only the weights are random, so the
whole pipeline — encode, train, save, generate — runs for real in seconds on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Iterable
from typing import Any

#: shapes by name; ``llama-3-1b`` and ``llama-3-8b`` are the ones the throughput comparison was measured at
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    "small": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2),
    "llama-3-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                       num_key_value_heads=8, rope_theta=500000.0),
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, rope_theta=500000.0),
}


def build_tiny_model(out_dir: str | Path, tokenizer_dir: str | Path, *, shape: str | dict[str, Any] = "tiny",
                     seed: int = 0, max_position_embeddings: int = 2048, dtype: str = "float32",
                     tie_word_embeddings: bool = False, untrained: Iterable[int] = ()) -> Path:
    """Write a random-init ``LlamaForCausalLM`` (``shape`` a name from ``SHAPES`` or a dict of config fields) and
    the tokenizer from ``tokenizer_dir`` into ``out_dir``; the vocabulary size is the tokenizer's.

    ``generation_config.json`` is left as transformers writes it (bos/eos of the tokenizer only), like a real base
    model: the trainer must set the stop ids itself. ``untrained``: token ids whose input and output embedding rows
    are set to zero, as a base model ships its never-trained chat tokens (Llama 3's ``<|eot_id|>``, ...).
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    fields = dict(SHAPES[shape]) if isinstance(shape, str) else dict(shape)
    head_dim = fields["hidden_size"] // fields["num_attention_heads"]
    cfg = LlamaConfig(
        vocab_size=len(tok),
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=None,
        tie_word_embeddings=tie_word_embeddings,
        head_dim=head_dim,
        **fields,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    zero = sorted(set(untrained))
    if zero:
        with torch.no_grad():
            model.get_input_embeddings().weight[zero] = 0
            model.get_output_embeddings().weight[zero] = 0
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "tmplcheck-tiny.json").write_text(json.dumps({"shape": fields, "seed": seed, "vocab_size": len(tok),
                                                         "tokenizer": str(tokenizer_dir), "untrained": zero},
                                                        indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Build a tiny random-init Llama model dir with a real tokenizer.")
    ap.add_argument("out_dir")
    ap.add_argument("--tokenizer", default="llama-3", help="built-in tokenizer name or an HF tokenizer dir")
    ap.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    tdir = Path(a.tokenizer)
    if not tdir.is_dir():
        from tmplcheck.validator.tokenizer import load_tokenizer

        tdir = load_tokenizer(a.tokenizer).hf_dir
    print(build_tiny_model(a.out_dir, tdir, shape=a.shape, seed=a.seed, dtype=a.dtype))


if __name__ == "__main__":
    main()
