"""The trainer: trains only approved data, with labels from the validator's verified masks.

``tmplcheck train`` (tmplcheck/cli_train.py) → ``trainer.recipe.run_training``; backends in ``trainer.backends``
(Unsloth on CUDA, transformers+PEFT anywhere); the special tokens it owns in ``trainer.special``. ``load_run``
loads a finished run directory for generation (used by the artifact report).

Nothing heavy is imported at package import time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RUN_FILES = ("run.json", "metrics.json", "eval.jsonl", "model", "tokenizer")


class RunDirError(ValueError):
    pass


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    p = Path(run_dir) / "run.json"
    if not p.is_file():
        raise RunDirError(f"{run_dir}: not a tmplcheck run directory (no run.json)")
    return json.loads(p.read_text(encoding="utf-8"))


def load_run(run_dir: str | Path, *, merged: bool = False, device: str | None = None,
             dtype: Any = None) -> tuple[Any, Any, dict[str, Any]]:
    """Load a run directory written by ``tmplcheck train``: ``(model, tokenizer, run_config)``.

    The model is the fully fine-tuned model, or the base model with the LoRA adapter applied (``merged=True``
    loads ``RUN_DIR/merged`` instead); its ``generation_config`` is the one the trainer saved (stop ids = the
    template's end-of-turn ids + eos); the tokenizer carries the validated chat template and the trainer's pad token.
    The model is in eval mode on ``device`` (default: CUDA when available, else CPU).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    for name in ("model", "tokenizer"):
        if not (run_dir / name).is_dir():
            raise RunDirError(f"{run_dir}: missing {name}/")
    tokenizer = AutoTokenizer.from_pretrained(str(run_dir / "tokenizer"))
    kw = {"dtype": dtype} if dtype is not None else {}
    if merged:
        if not (run_dir / "merged").is_dir():
            raise RunDirError(f"{run_dir}: no merged/ model (train with --merge)")
        model = AutoModelForCausalLM.from_pretrained(str(run_dir / "merged"), **kw)
        gen_dir = run_dir / "merged"
    elif cfg.get("mode") == "lora":
        from peft import PeftModel

        base_path = cfg["base_model"]
        base = AutoModelForCausalLM.from_pretrained(base_path, **kw)
        vocab = cfg.get("vocab_size")
        if vocab and base.get_input_embeddings().weight.shape[0] != vocab:
            base.resize_token_embeddings(vocab)
        model = PeftModel.from_pretrained(base, str(run_dir / "model"))
        gen_dir = run_dir / "model"
    else:
        model = AutoModelForCausalLM.from_pretrained(str(run_dir / "model"), **kw)
        gen_dir = run_dir / "model"
    gen = GenerationConfig.from_pretrained(str(gen_dir))
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    target.generation_config = gen
    model.generation_config = gen
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    model.eval()
    return model, tokenizer, cfg


__all__ = ["load_run", "read_run_config", "RunDirError", "RUN_FILES"]
