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
