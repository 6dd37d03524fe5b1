"""Bounds on one row, so that no line can stop the gate: nesting depth, numbers, keys, messages, content length.

A JSONL line of 100,000 nested ``[`` made Python's JSON decoder raise ``RecursionError`` (and an integer of 5,000
digits a ``ValueError``), which ended the whole run with exit 2 and lost every other row. Here each bound is checked
on the row's raw bytes *before* decoding (:func:`check_raw`: depth, digits) and on the decoded object *after*
(:func:`check_decoded`: keys, messages, content length, NaN/Infinity). A row over a bound becomes one located D
finding (line, column or JSON pointer) and is not parsed further; every other row is checked as before.

Both functions cost a few C-level byte scans on an ordinary row (``bytes.count``, ``in``, one regex search); the
precise, slower scans run only on rows that the quick ones cannot clear.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from tmplcheck.validator.findings import Finding, finding


@dataclass(frozen=True)
class Limits:
    depth: int = 64                  # nested arrays/objects (a conversation needs 3-4; tool schemas ~10-20)
    digits: int = 4000               # digits of one JSON number (Python refuses to convert > 4300)
    keys: int = 1_000                # keys in one object (a tool schema has tens)
    items: int = 100_000             # elements in one array (other than the messages list)
    messages: int = 10_000           # messages in one conversation
    content_chars: int = 1_000_000   # characters of one string value (a message content, a tool argument...)


DEFAULT = Limits()

_DIGITS = b"0123456789"
_LONG_NUMBER = re.compile(rb"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_BIG_EXPONENT = re.compile(rb"[0-9][eE][+-]?[0-9]{3,}")


def _longest_digit_run(data: bytes) -> int:
    """The longest run of ASCII digits in ``data`` (linear; a regex like ``[0-9]{4000}`` rescans each run)."""
    import numpy as np

    a = np.frombuffer(data, dtype=np.uint8)
    digit = (a >= 0x30) & (a <= 0x39)
    if not digit.any():
        return 0
    pos = np.arange(a.size)
    last_other = np.maximum.accumulate(np.where(digit, -1, pos))
    return int((pos - last_other).max())


def _bare(data: bytes):
    """The row's bytes as a numpy array with every byte inside a JSON string (quotes included) set to a space, so
    that brackets and digits in strings do not count. Linear time, whatever the input (no regex backtracking):
    a quote opens or closes a string unless an odd run of backslashes precedes it."""
    import numpy as np

    a = np.frombuffer(data, dtype=np.uint8).copy()
    n = a.size
    if not n:
        return a
    pos = np.arange(n)
    last_plain = np.maximum.accumulate(np.where(a != 0x5C, pos, -1))    # last index <= i that is not a backslash
    run_before = np.empty(n, dtype=np.int64)                             # backslashes right before i
    run_before[0] = 0
    run_before[1:] = pos[:-1] - last_plain[:-1]
    quote = (a == 0x22) & (run_before % 2 == 0)
    inside = (np.cumsum(quote) % 2 == 1) | quote
    a[inside] = 0x20
    return a


def _max_depth(bare, limit: int) -> tuple[int, int]:
    """(the deepest nesting outside strings, the 0-based byte offset where it first passes ``limit``)."""
    import numpy as np

    step = ((bare == 0x5B) | (bare == 0x7B)).astype(np.int32) - ((bare == 0x5D) | (bare == 0x7D)).astype(np.int32)
    if not step.size:
        return 0, 0
    depth = np.cumsum(step)
    return int(depth.max()), int(np.argmax(depth > limit))


def check_raw(data: bytes, *, path: str, line: int, limits: Limits = DEFAULT) -> list[Finding]:
    """Bounds that must hold before the row is decoded: nesting depth (D060) and the length of a number (D062).

    Returns the findings (the row must then not be decoded), or [] for a row that can be decoded safely."""
    opens = data.count(b"[") + data.count(b"{")
    bare = None
    if opens > limits.depth:
        bare = _bare(data)
        depth, at = _max_depth(bare, limits.depth)
        if depth > limits.depth:
            return [finding("D060", f"the row nests arrays/objects {depth} deep, over the limit of {limits.depth}; "
                                    "not loaded", path=path, line=line, column=at + 1,
                            data={"depth": depth, "limit": limits.depth})]
    if len(data) > limits.digits and len(data) - len(data.translate(None, _DIGITS)) > limits.digits \
            and _longest_digit_run(data) > limits.digits:
        bare = _bare(data) if bare is None else bare
        for m in _LONG_NUMBER.finditer(bare.tobytes()):
            if len(m.group()) > limits.digits:
                return [finding("D062", f"a number of {len(m.group())} characters, over the limit of "
                                        f"{limits.digits}; not loaded (JSON readers refuse or round it)",
                                path=path, line=line, data={"length": len(m.group()), "limit": limits.digits})]
    return []


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def check_decoded(obj: Any, data: bytes, *, path: str, line: int, limits: Limits = DEFAULT,
                  odd_numbers: bool | None = None) -> list[Finding]:
    """Bounds on the decoded row: keys per object and items per array (D061), messages per conversation and
    characters per string (D061), and NaN/Infinity, which standard JSON does not have (D062). Each finding carries
    the JSON pointer of the offending value. Returns [] for a row within every bound (the usual case: a row with
    fewer separators and bytes than the smallest count bound is cleared without a walk)."""
    # a bound can only be passed by a row with that many separators or bytes: count them in C first (an object of
    # more than `keys` keys has as many ':' outside strings, an array of n items n-1 ',', a string of n characters
    # n bytes), so that an ordinary row of any size is cleared without a walk
    small = (len(data) <= limits.content_chars and data.count(b":") <= limits.keys
             and data.count(b",") < min(limits.items, limits.messages))
    if odd_numbers is None:   # (the gate's decoder says it while decoding: ``ingest._SEEN.odd``)
        odd_numbers = (b"NaN" in data or b"Infinity" in data or _BIG_EXPONENT.search(data) is not None)
    if small and not odd_numbers:
        return []
    out: list[Finding] = []
    stack: list[tuple[Any, str]] = [(obj, "")]
    while stack and len(out) < 5:
        value, ptr = stack.pop()
        if isinstance(value, dict):
            if len(value) > limits.keys:
                out.append(finding("D061", f"an object with {len(value)} keys, over the limit of {limits.keys}",
                                   path=path, line=line, pointer=ptr or "/", data={"keys": len(value)}))
                continue
            for k, v in value.items():
                stack.append((v, f"{ptr}/{_escape(str(k))}"))
        elif isinstance(value, list):
            is_conversation = ptr in ("/conversations", "/messages")
            limit = limits.messages if is_conversation else limits.items
            if len(value) > limit:
                what = "messages" if is_conversation else "items"
                out.append(finding("D061", f"{len(value)} {what}, over the limit of {limit}", path=path, line=line,
                                   pointer=ptr or "/", data={what: len(value)}))
                continue
            for i, v in enumerate(value):
                stack.append((v, f"{ptr}/{i}"))
        elif isinstance(value, str):
            if len(value) > limits.content_chars:
                out.append(finding("D061", f"a string of {len(value):,} characters, over the limit of "
                                           f"{limits.content_chars:,}", path=path, line=line, pointer=ptr or "/",
                                   data={"chars": len(value)}))
        elif isinstance(value, float) and not math.isfinite(value):
            out.append(finding("D062", f"{value!r} is not a JSON number (NaN/Infinity, or a number too large for a "
                                       "double): standard JSON readers refuse the file", path=path, line=line,
                               pointer=ptr or "/"))
    out.sort(key=lambda f: f.pointer)
    return out
