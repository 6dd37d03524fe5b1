"""Which assistant turns a row trains on: per-message flags and the ``train_on`` setting, in one pure function.

Two per-message flags are honoured, as the trainers that define them read them:

- ``weight`` (OpenAI's fine-tuning format): ``0`` or ``1`` on an assistant message; 0 leaves the turn out of the loss.
- ``train`` (axolotl's per-message flag): ``true``/``false``; ``trainable`` is read as the same flag.

A flag whose value is ``null`` counts as absent: columnar files (parquet, Arrow) give every message of a column the
same struct fields and fill the ones a message did not have with null, so an absent flag and a null one must mean
the same thing.

``train_on`` decides the turns without a flag: ``all-assistant`` (default: every assistant message is trained) or
``last-assistant`` (only the row's last assistant message). An explicit flag always wins over ``train_on``.

:func:`trained_turns` is what every place that makes or expects a mask calls (the gate's M checks, ``show``,
``train``, the tokenized audit); :func:`check_training_flags` is the row's D checks on the flags (D051-D053).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from tmplcheck.validator.findings import Finding, finding

TRAIN_ON = ("all-assistant", "last-assistant")
DEFAULT_TRAIN_ON = "all-assistant"
#: the message keys read as a training flag, in the order they are looked at
FLAG_KEYS = ("weight", "train", "trainable")


def _messages(conversation: Any) -> Sequence[Any]:
    return conversation.messages if hasattr(conversation, "messages") else conversation


def _role(m: Any) -> Any:
    return m.role if hasattr(m, "role") and not isinstance(m, dict) else m.get("role")


def _value(m: Any, key: str) -> Any:
    return m.get(key) if isinstance(m, dict) else m.get(key)


def valid_train_on(train_on: str | None) -> str:
    """``train_on`` checked (None → the default); raises ValueError for a value that is not one of TRAIN_ON."""
    if train_on is None:
        return DEFAULT_TRAIN_ON
    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on must be one of {', '.join(TRAIN_ON)}, not {train_on!r}")
    return train_on


def flag_of(m: Any) -> bool | None:
    """The message's own training flag: True (train), False (do not), None (no flag, or one with a bad value —
    :func:`check_training_flags` reports those; the turn then follows ``train_on``)."""
    for key in FLAG_KEYS:
        v = _value(m, key)
        if v is None:
            continue
        if key == "weight":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v not in (0, 1):
                return None
            return v == 1
        if isinstance(v, bool):
            return v
        return None
    return None


def trained_turns(conversation: Any, train_on: str | None = DEFAULT_TRAIN_ON) -> frozenset[int]:
    """Indices of the assistant messages whose turn is trained.

    ``conversation``: a :class:`~tmplcheck.validator.ingest.Conversation`, a list of its ``Message`` or a list of
    message dicts (``role`` plus any flags). Only assistant messages are ever trained: a flag on another message is
    reported (D051), never followed.
    """
    train_on = valid_train_on(train_on)
    msgs = _messages(conversation)
    assistants = [i for i, m in enumerate(msgs) if _role(m) == "assistant"]
    last = assistants[-1] if assistants else None
    out = []
    for i in assistants:
        flag = flag_of(msgs[i])
        if flag is None:
            flag = train_on == "all-assistant" or i == last
        if flag:
            out.append(i)
    return frozenset(out)


def _shown(v: Any) -> Any:
    """A flag's value as the message shows it: a whole float as the integer (parquet stores 0/1 weights as
    doubles when any weight of the column is fractional)."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _flag_pointer(m: Any, key: str) -> str:
    ptr = getattr(m, "pointer", "") or ""
    base = ptr.rsplit("/", 1)[0] if ptr.count("/") >= 2 else ptr
    return f"{base}/{key}"


def check_training_flags(conv: Any, train_on: str | None = DEFAULT_TRAIN_ON) -> Iterator[Finding]:
    """D051 a flag on a message that is not an assistant message, D052 a flag with a value no trainer reads the
    same way, D053 a row with assistant turns of which none is left to train."""
    msgs = conv.messages
    flagged = False
    for i, m in enumerate(msgs):
        if not m.fields:
            continue
        for key in FLAG_KEYS:
            v = m.get(key)
            if v is None:
                continue
            flagged = True
            where = {"path": conv.path, "line": conv.line, "pointer": _flag_pointer(m, key)}
            if key == "weight":
                ok = not isinstance(v, bool) and isinstance(v, (int, float)) and v in (0, 1)
                want = "0 or 1"
            else:
                ok = isinstance(v, bool)
                want = "true or false"
            if not ok:
                yield finding("D052", f"{m.role} message {i} has {key}={_shown(v)!r}; expected {want}", **where)
                continue
            if m.role != "assistant":
                yield finding("D051", f"{m.role} message {i} has {key}={_shown(v)!r}: only assistant turns are trained, so "
                                      "tmplcheck's mask and `tmplcheck train` ignore it"
                                      + (" (axolotl would train this message)" if key != "weight" and v else ""),
                              **where)
    if not conv.usable:
        return
    if not flagged and valid_train_on(train_on) == DEFAULT_TRAIN_ON:
        return   # no flag: every assistant turn is trained (D019 reports a row without one)
    if any(m.role == "assistant" for m in msgs) and not trained_turns(conv, train_on):
        yield finding("D053", "every assistant turn is flagged not to be trained: the row trains on nothing",
                      path=conv.path, line=conv.line, pointer=conv.key)
