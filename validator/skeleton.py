"""Shape skeletons: a template rendered once per conversation shape with sentinel contents.

The text between the sentinels is the template's own text (headers, end-of-turn strings) and their order is the order
the template writes the messages in. Filling a skeleton with a row's contents gives the row's render whenever the
template only pastes contents (``validator/opaque.py`` proves that for a template; ``tokens.locate_messages`` checks
it per row against the real render), with every content's place known. Used by the token locator, the fill
renderer and the llama.cpp shape check, so all three agree on one skeleton per shape. No heavy imports: the
template stage uses it without a tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

#: private-use characters around a message's index: text no template writes, no dataset row should hold
SENT_OPEN, SENT_CLOSE = "\ue000", "\ue001"


def sentinel(i: int) -> str:
    """The placeholder content of message ``i`` in a skeleton render."""
    return f"{SENT_OPEN}{i}{SENT_CLOSE}"


def has_sentinel_chars(s: str) -> bool:
    return SENT_OPEN in s or SENT_CLOSE in s


def sentinel_messages(messages: Sequence[dict], indices: Iterable[int]) -> list[dict]:
    """Copies of ``messages`` with the contents at ``indices`` replaced by their sentinels (non-empty: templates
    branch on ``if message.content``)."""
    sent = [dict(m) for m in messages]
    for i in indices:
        sent[i]["content"] = sentinel(i)
    return sent


def places(text: str, indices: Iterable[int]) -> list[tuple[int, int]] | None:
    """``[(position, index), ...]`` of each sentinel in ``text``, in text order; None unless each is there once."""
    where = []
    for i in indices:
        tag = sentinel(i)
        p = text.find(tag)
        if p < 0 or text.find(tag, p + 1) >= 0:
            return None
        where.append((p, i))
    where.sort()
    return where


def skeleton(template, messages: Sequence[dict], indices: Sequence[int], render_kw: dict):
    """Render with sentinels at ``indices``; ``(skeleton, places)`` or None when the template refuses the shape or
    writes a content other than once."""
    try:
        sk = template.render(sentinel_messages(messages, indices), add_generation_prompt=False, **render_kw)
    except Exception:  # noqa: BLE001 - the row's own render reports it
        return None
    where = places(sk, indices)
    return (sk, where) if where is not None else None


def fill(skeleton_text: str, where: list[tuple[int, int]], contents: dict[int, str] | Sequence[str]):
    """Put contents into the skeleton; ``(text, {index: (start, end)})``."""
    out, pos, at, shift = [], 0, {}, 0
    for p, i in where:
        tag_len = len(str(i)) + 2
        out.append(skeleton_text[pos:p])
        start = p + shift
        c = contents[i]
        out.append(c)
        at[i] = (start, start + len(c))
        shift += len(c) - tag_len
        pos = p + tag_len
    out.append(skeleton_text[pos:])
    return "".join(out), at
