"""Generate on a run's held-out prompts with the trained model, the validated template and the saved stop ids.

Greedy and sampled generations are recorded with special tokens kept (``output``) and skipped
(``output_skipped``), their ``output_ids`` (cut after the first stop id) and a ``finish_reason``. Imports torch
lazily: only ``tmplcheck report`` needs it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    samples: int = 1            # sampled generations per prompt, besides the greedy one
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int = 0
    batch_size: int = 16
    max_prompts: int | None = None


def eval_prompts(eval_path: Path, max_prompts: int | None = None) \
        -> Iterator[tuple[int, list[dict], str | None, dict]]:
    """(line, prompt messages, reference answer, template arguments) for each held-out row: the messages before its
    last assistant turn, and the row's tools, documents and ``chat_template_kwargs`` (the prompt is rendered with
    them, as a server that offers the row's tools would)."""
    from tmplcheck.validator.ingest import read_rows

    n = 0
    for row in read_rows(eval_path):
        conv = row.conversation
        if conv is None or not conv.usable or not conv.messages:
            continue
        msgs = conv.dicts()
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if last is None:
            prompt, ref = msgs, None
        else:
            prompt, ref = msgs[:last], msgs[last]["content"]
        if not prompt:
            continue
        yield conv.line, prompt, ref, conv.render_kw()
        n += 1
        if max_prompts is not None and n >= max_prompts:
            return


def _encode(tok: Any, text: str) -> list[int]:
    """Prompt ids as training encoded its rows (``apply_chat_template(tokenize=True)``: the render alone, no special
    tokens added): a BOS only where the template writes it."""
    enc = tok.encode(text, add_special_tokens=False)  # our Tokenizer (an Encoding) or a transformers one (a list)
    return list(getattr(enc, "ids", enc))


def generate(model: Any, tokenizer: Any, template: Any, prompts: Sequence[tuple[int, list[dict], str | None]],
             stop_ids: Sequence[int], cfg: GenerationConfig) -> list[dict]:
    """Run greedy (+ ``cfg.samples`` sampled) generations for every prompt; real model calls, no shortcuts."""
    import torch

    stops = [int(i) for i in stop_ids]
    if not stops:
        raise ValueError("no stop ids: the run saved none (run.json stop_ids / generation_config eos_token_id)")
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = stops[0] if pad is None else int(pad)
    device = next(model.parameters()).device
    model.eval()
    encoded = []
    for p in prompts:
        line, msgs, ref = p[:3]
        text = template.render(msgs, add_generation_prompt=True, **(p[3] if len(p) > 3 else {}))
        encoded.append((line, msgs, ref, text, _encode(tokenizer, text)))
    modes = [("greedy", 0)] + [("sampled", k) for k in range(cfg.samples)]
    rows: list[dict] = []
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    for mode, k in modes:
        for b in range(0, len(encoded), cfg.batch_size):
            batch = encoded[b:b + cfg.batch_size]
            width = max(len(e[4]) for e in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, e in enumerate(batch):  # left padding: every prompt ends at the same position
                ids[i, width - len(e[4]):] = torch.tensor(e[4], dtype=torch.long)
                mask[i, width - len(e[4]):] = 1
            kw: dict[str, Any] = dict(max_new_tokens=cfg.max_new_tokens, eos_token_id=stops, pad_token_id=pad)
            if mode == "greedy":
                kw.update(do_sample=False)
            else:
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
                kw.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
            with torch.no_grad():
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kw)
            for i, e in enumerate(batch):
                new = out[i, width:].tolist()
                cut = next((j for j, t in enumerate(new) if t in stops), None)
                if cut is not None:
                    new, reason = new[:cut + 1], "stop"
                else:
                    reason = "length"
                rows.append({
                    "prompt": e[1],
                    "output": tokenizer.decode(new, skip_special_tokens=False),
                    "output_skipped": tokenizer.decode(new, skip_special_tokens=True),
                    "output_ids": new,
                    "finish_reason": reason,
                    "mode": mode,
                    "sample": k,
                    "eval_line": e[0],
                    "reference": e[2],
                    "prompt_text": e[3],
                })
    return rows


def write_generations(rows: Sequence[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)


def generate_llamacpp(gguf_path: Path, prompts: Sequence[tuple], cfg: GenerationConfig, *,
                      n_ctx: int = 2048, n_threads: int | None = None) -> list[dict]:
    """Greedy (+ sampled) generations through llama-cpp-python's ``create_chat_completion`` on the exported GGUF:
    the chat handler ``Llama`` picks from the GGUF's metadata (its ``tokenizer.chat_template`` through
    ``Jinja2ChatFormatter``, or a built-in Python format it guesses, or its "llama-2" fallback when there is no
    template), the GGUF's end-of-generation ids and the handler's stop strings, as llama-cpp-python's server formats
    chat. The message content it returns is ``output_skipped`` (special tokens are not detokenized); the sampled ids
    are recorded from ``Llama.generate`` (every token the completion loop consumed, the end-of-generation one
    included) for ``output_ids`` and ``output`` (detokenized with special tokens kept).

    Sampling matches the transformers path: temperature 0 for greedy; for sampled, ``cfg.temperature``/``top_p``,
    no top-k or min-p cut, no repeat penalty (llama-cpp-python's chat defaults would add 1.1)."""
    import os

    try:
        from llama_cpp import Llama
    except ImportError as e:  # pragma: no cover - llama-cpp-python is a base dependency
        raise ImportError(f"--engine llamacpp needs llama-cpp-python: {e}") from e

    llm = Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_threads=n_threads or max(1, (os.cpu_count() or 2)),
                seed=cfg.seed, verbose=False)
    record: dict[str, list[int]] = {}
    original = llm.generate

    def recording_generate(tokens, **kw):
        record["prompt"] = [int(t) for t in tokens]
        record["out"] = out = []
        for t in original(tokens, **kw):
            out.append(int(t))
            yield t

    llm.generate = recording_generate   # the instance's completion loop calls self.generate

    def text(ids: list[int], special: bool) -> str:
        return llm.detokenize(ids, special=special).decode("utf-8", errors="replace")

    rows: list[dict] = []
    modes = [("greedy", 0)] + [("sampled", k) for k in range(cfg.samples)]
    for mode, k in modes:
        for i, p in enumerate(prompts):
            line, msgs, ref = p[:3]
            kw: dict[str, Any] = dict(max_tokens=cfg.max_new_tokens, repeat_penalty=1.0, min_p=0.0,
                                      seed=cfg.seed + 1000 * k + i)
            if mode == "greedy":
                kw.update(temperature=0.0, top_k=1, top_p=1.0)
            else:
                kw.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
            res = llm.create_chat_completion(messages=[dict(m) for m in msgs], **kw)
            choice = res["choices"][0]
            ids = list(record.get("out", []))
            rows.append({
                "prompt": msgs,
                "output": text(ids, True),
                "output_skipped": choice["message"].get("content") or "",
                "output_ids": ids,
                "finish_reason": choice.get("finish_reason") or "length",
                "mode": mode,
                "sample": k,
                "eval_line": line,
                "reference": ref,
                "prompt_text": text(record.get("prompt", []), True),
                "engine": "llamacpp",
                "chat_format": llm.chat_format,
            })
    llm.close() if hasattr(llm, "close") else None
    return rows
