"""Rows → training examples whose labels are the validator's verified assistant masks.

The labels come from ``tmplcheck.validator.tokens.encode_conversation`` — the same function whose masks the gate
checked — never from string matching on rendered text. Optional packing concatenates encoded rows into blocks of
exactly ``block`` tokens (the labels travel with their ids). Nothing here imports torch except the collator.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tmplcheck.trainer.special import check_bos

IGNORE = -100


class DataError(ValueError):
    pass


@dataclass
class Example:
    ids: list[int]
    labels: list[int]
    line: int

    @property
    def trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


@dataclass
class Rows:
    """Readable conversations of a dataset, with the source lines they came from."""

    convs: list[Any] = field(default_factory=list)   # validator.ingest.Conversation
    unreadable: int = 0


def read_conversations(path: str | Path, input_format: str | None = None) -> Rows:
    from tmplcheck.validator.ingest import read_rows

    out = Rows()
    for row in read_rows(path, input_format=input_format):
        if row.conversation is None or not row.conversation.usable or not row.conversation.messages:
            if row.findings and any(f.code != "D005" for f in row.findings):
                out.unreadable += 1
            continue
        out.convs.append(row.conversation)
    return out


def split(convs: list[Any], eval_split: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Deterministic held-out split: ``round(eval_split * n)`` rows (at least one when asked and n >= 2)."""
    if not 0 <= eval_split < 1:
        raise DataError(f"--eval-split must be in [0, 1), got {eval_split}")
    n = len(convs)
    k = round(eval_split * n)
    if eval_split > 0 and n >= 2:
        k = max(k, 1)
    k = min(k, n - 1) if n else 0
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:k])
    return [c for i, c in enumerate(convs) if i not in held], [c for i, c in enumerate(convs) if i in held]


def write_eval(path: Path, data_path: str | Path, convs: list[Any]) -> int:
    """Write held-out rows as JSONL, each the dataset's own row byte for byte (a JSONL line, or the element of a JSON
    list file, put on one line): every field the row has (tools, tool calls, reasoning...) is kept."""
    from tmplcheck.validator.ingest import open_records

    want = {c.line for c in convs}
    out: list[str] = []
    with open(Path(data_path), "rb") as fh:
        is_array, records = open_records(fh, data_path)
        for rec in records:
            if rec.line in want and rec.data is not None:
                text = rec.data.decode("utf-8", errors="replace")
                out.append((json.dumps(json.loads(text), ensure_ascii=False) if is_array else text) + "\n")
    path.write_text("".join(out), encoding="utf-8")
    return len(out)


def add_special_tokens_for(template: Any, tok: Any) -> bool:
    """Whether the tokenizer's post-processor runs on the render: the validator's one policy
    (``tmplcheck.validator.tokens.add_special_tokens_for``), so the model trains on exactly one BOS either way."""
    from tmplcheck.validator.tokens import add_special_tokens_for as policy

    return policy(template, tok)


LOSS_ON = ("assistant", "all")


def encode(convs: Iterable[Any], template: Any, tok: Any, *, max_length: int | None,
           loss_on: str = "assistant", render_defaults: dict | None = None,
           train_on: str | None = None) -> Iterator[Example]:
    """Encode each conversation with the validator's ``encode_conversation``; labels = its verified mask.

    ``loss_on="all"`` makes every token of the row a label instead (system prompt, headers, control tokens
    included): the naive causal-LM pipeline, kept to reproduce what a wrong template does to such a pipeline —
    not for real runs. ``train_on``: which assistant turns are trained when a message has no ``weight``/``train``
    flag of its own (``validator/training_flags.py``, as the gate's mask checks read them). ``max_length`` truncates (None: keep whole rows, e.g. for packing). Raises
    ``TokenSetupError`` on a double BOS.
    """
    if loss_on not in LOSS_ON:
        raise DataError(f"--loss-on must be one of {', '.join(LOSS_ON)}, not {loss_on!r}")
    from tmplcheck.validator.tokens import encode_conversation

    bos = getattr(tok, "bos_id", None)
    add_special = add_special_tokens_for(template, tok)
    for c in convs:
        enc = encode_conversation(template, tok, c.dicts(), max_length=max_length, add_special_tokens=add_special,
                                  render_kw=c.render_kw(render_defaults), train_on=train_on)
        ids = list(enc.ids)
        labels = list(ids) if loss_on == "all" else list(enc.labels)
        if len(ids) != len(labels):
            raise DataError(f"line {c.line}: encode_conversation returned {len(ids)} ids but {len(labels)} labels")
        if max_length is not None and len(ids) > max_length:
            ids, labels = ids[:max_length], labels[:max_length]
        check_bos(ids, bos, where=f"line {c.line}")
        yield Example(ids, labels, c.line)


def pack(examples: Iterable[Example], block: int) -> list[dict[str, list[int]]]:
    """Concatenate rows (ids with their labels) and cut the stream into blocks of exactly ``block`` tokens; the
    tail becomes a last, shorter block. Attention runs across row boundaries inside a block (plain causal
    packing), so what a template writes — or fails to write — between rows is what the model sees."""
    if block < 2:
        raise DataError("--max-length must be at least 2 for packing")
    blocks: list[dict[str, list[int]]] = []
    ids: list[int] = []
    labels: list[int] = []
    for ex in examples:
        ids.extend(ex.ids)
        labels.extend(ex.labels)
        while len(ids) >= block:
            blocks.append({"input_ids": ids[:block], "labels": labels[:block]})
            ids, labels = ids[block:], labels[block:]
    if ids:
        blocks.append({"input_ids": ids, "labels": labels})
    return [b for b in blocks if any(x != IGNORE for x in b["labels"])]


class Collator:
    """Right-pad a batch with the trainer's pad id; labels padded with -100; counts the real tokens it saw."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id
        self.batch_tokens: list[int] = []   # real tokens per collated batch, in order (the loader may run ahead)

    def tokens_in(self, batches: int) -> int:
        """Real tokens in the first ``batches`` batches (those the optimiser actually consumed)."""
        return sum(self.batch_tokens[:batches])

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            labels[i, :n] = torch.as_tensor(f["labels"], dtype=torch.long)
            mask[i, :n] = 1
        self.batch_tokens.append(int(mask.sum()))
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
