"""Untrained embedding rows: the base-model case that breaks chat fine-tunes.

A base model such as Llama 3 (not -Instruct) ships its chat control tokens (``<|start_header_id|>``,
``<|end_header_id|>``, ``<|eot_id|>``) with all-zero embedding and output rows: they were never trained. A chat
fine-tune that trains on them with frozen embeddings (LoRA) cannot learn to read a header or to end a turn, and
Unsloth's trainer stops at init (``fix_untrained_tokens`` raises ``ValueError``). The recipe checks it first, for both
backends: with LoRA it refuses with the tokens and the rows that use them; with a full fine-tune it sets those rows to
the mean of the trained rows (what Unsloth's ``fix_untrained_tokens`` does when the embeddings are trainable) and
says so.

The test is Unsloth's: an input-embedding row whose entries are all within ``eps`` of zero, and whose output row is
too or is repeated in another such row (untied heads keep an init value there, the same for every untrained token).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

EPS = 1e-16


def _matrices(model: Any):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    emb = base.get_input_embeddings().weight
    out = base.get_output_embeddings()
    return emb, (out.weight if out is not None and getattr(out, "weight", None) is not None else emb)


def untrained_rows(model: Any, *, eps: float = EPS) -> set[int]:
    """Every token id whose input and output rows are untrained (Unsloth's criterion, see the module doc)."""
    import torch

    emb, head = _matrices(model)
    n = min(emb.shape[0], head.shape[0])
    with torch.no_grad():
        zero_in = (emb[:n].abs().amax(dim=1) <= eps).nonzero().flatten().tolist()
        if not zero_in:
            return set()
        rows = head[zero_in].float()
        zero_out = (rows.abs().amax(dim=1) <= eps).tolist()
        keys = [r.cpu().numpy().round(3).tobytes() for r in rows]
    seen: dict[bytes, int] = {}
    for k in keys:
        seen[k] = seen.get(k, 0) + 1
    return {i for i, z, k in zip(zero_in, zero_out, keys) if z or seen[k] >= 2}


def untrained_in_use(model: Any, used: Iterable[int], *, ignore: Iterable[int] = ()) -> list[int]:
    """The untrained rows among ``used`` (ids the data feeds or trains, stop ids), minus ``ignore`` (the pad)."""
    bad = untrained_rows(model)
    if not bad:
        return []
    return sorted((bad & set(used)) - set(ignore))


def reset_to_mean(model: Any, ids: list[int]) -> None:
    """Set the input (and untied output) rows of ``ids`` to the mean of the trained rows."""
    import torch

    emb, head = _matrices(model)
    bad = torch.zeros(emb.shape[0], dtype=torch.bool)
    bad[list(untrained_rows(model))] = True
    with torch.no_grad():
        for m in {id(emb): emb, id(head): head}.values():
            keep = ~bad[: m.shape[0]].to(m.device)
            mean = m[keep].float().mean(dim=0).to(m.dtype)
            m[ids] = mean
