"""Pure functions that compare a training render with a llama.cpp render and classify what differs.

Nothing here renders: callers pass texts and messages in and get measurements, transformed messages and classified
edit operations back. ``validator/crosscheck.py`` drives them (render, normalise one step, measure, keep the step if
the two texts moved closer).

Texts are compared on *segments* — control tokens (``<|eot_id|>``, ``[INST]``, ``<｜User｜>``), whitespace runs,
words and single punctuation characters — so an edit lines up with the template's own structure.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Control-token shapes seen in chat templates, then whitespace, words, single other characters: covers every char.
_SEG = re.compile(
    r"<\|[^|<>\n]{0,48}\|>"            # <|im_start|> <|eot_id|>
    r"|<｜[^｜<>\n]{0,48}｜>"            # <｜User｜>
    r"|\[/?[A-Z][A-Z_]{1,30}\]"        # [INST] [/SYSTEM_PROMPT]
    r"|</?[A-Za-z_][\w:.\-]{0,30}>"   # <start_of_turn> </s> <think>
    r"|\s+|\w+|[^\w\s]",
    re.UNICODE,
)

#: BOS strings of common tokenizers, tried when the template's own bos_token is not known.
KNOWN_BOS = ("<|begin_of_text|>", "<｜begin▁of▁sentence｜>", "<BOS_TOKEN>", "<|startoftext|>", "<bos>", "<s>")
KNOWN_EOS = ("<|end_of_text|>", "<｜end▁of▁sentence｜>", "<|endoftext|>", "<EOS_TOKEN>", "<eos>", "</s>")

#: Llama 3.1's date preamble in the system turn.
DATE_LINES = re.compile(r"Cutting Knowledge Date: [^\n]*\nToday Date: [^\n]*\n\n")

C_SPACE = " \t\n\v\f\r"   # what llama.cpp's trim (C isspace) removes


def segments(text: str) -> list[str]:
    return _SEG.findall(text)


def c_strip(s: str) -> str:
    """llama.cpp's trim: ASCII whitespace only (NBSP and U+3000 stay)."""
    return s.strip(C_SPACE)


# ------------------------------------------------------------------------------------------------------ edit script
@dataclass(frozen=True)
class Op:
    """One non-equal region: ``a[a0:a1]`` (training side) became ``b[b0:b1]`` (llama.cpp side)."""

    a0: int
    a1: int
    b0: int
    b1: int

    @property
    def kind(self) -> str:
        if self.a0 == self.a1:
            return "llama_only"
        if self.b0 == self.b1:
            return "template_only"
        return "replace"

    def size(self) -> int:
        return max(self.a1 - self.a0, self.b1 - self.b0)


def _bounds(text: str) -> list[int]:
    out = [0]
    for x in segments(text):
        out.append(out[-1] + len(x))
    return out


def diff_ops(a: str, b: str) -> list[Op]:
    """Character ranges where ``a`` and ``b`` differ, aligned on segments; [] when equal."""
    if a == b:
        return []
    n = min(len(a), len(b))
    p = 0
    while p < n and a[p] == b[p]:
        p += 1
    s = 0
    while s < n - p and a[len(a) - 1 - s] == b[len(b) - 1 - s]:
        s += 1
    # move both cuts to a segment boundary shared by the two texts, so a token is never split
    ba, bb = _bounds(a), _bounds(b)
    common_pre = set(ba) & set(bb)
    p = max(x for x in common_pre if x <= p)
    sa_set = {len(a) - x for x in ba}
    sb_set = {len(b) - x for x in bb}
    s = max(x for x in (sa_set & sb_set) if x <= s)
    if p + s > n:  # overlapping cuts (repeated text): keep the prefix, shrink the suffix
        s = max(x for x in (sa_set & sb_set) if x <= n - p)
    sa = segments(a[p:len(a) - s])
    sb = segments(b[p:len(b) - s])
    offa = _offsets(sa, p)
    offb = _offsets(sb, p)
    ops = []
    for i1, i2, j1, j2 in _align(sa, sb):
        ops.append(Op(offa[i1], offa[i2], offb[j1], offb[j2]))
    return [_slide_left(o, a, b) for o in _merge(ops)]


def _align(sa: list[str], sb: list[str]) -> list[tuple[int, int, int, int]]:
    """Non-equal segment ranges ``(i1, i2, j1, j2)``.

    Words and control tokens are aligned first with whitespace ignored (a lone space must never anchor an
    alignment); the gaps between anchors are then compared in full, trimmed to their differing segments.
    """
    na = [i for i, x in enumerate(sa) if not x.isspace()]
    nb = [j for j, x in enumerate(sb) if not x.isspace()]
    anchors: list[tuple[int, int]] = []
    if na and nb and len(na) * len(nb) <= 16_000_000:
        sm = difflib.SequenceMatcher(None, [sa[i] for i in na], [sb[j] for j in nb], autojunk=False)
        anchors = [(na[i + k], nb[j + k]) for i, j, n in sm.get_matching_blocks() for k in range(n)]
    out: list[tuple[int, int, int, int]] = []
    pi = pj = 0
    for i, j in anchors + [(len(sa), len(sb))]:
        i0, i1, j0, j1 = pi, i, pj, j
        while i0 < i1 and j0 < j1 and sa[i0] == sb[j0]:
            i0, j0 = i0 + 1, j0 + 1
        while i1 > i0 and j1 > j0 and sa[i1 - 1] == sb[j1 - 1]:
            i1, j1 = i1 - 1, j1 - 1
        if i0 < i1 or j0 < j1:
            out.append((i0, i1, j0, j1))
        pi, pj = i + 1, j + 1
    return out


def _slide_left(o: Op, a: str, b: str) -> Op:
    """Among equivalent places for a pure insertion, prefer the leftmost that starts with a control token."""
    if o.a0 == o.a1 and o.b1 > o.b0:
        text, x0, x1, y0 = b, o.b0, o.b1, o.a0
        other = a
    elif o.b0 == o.b1 and o.a1 > o.a0:
        text, x0, x1, y0 = a, o.a0, o.a1, o.b0
        other = b
    else:
        return o
    best = None
    while x0 > 0 and y0 > 0 and text[x0 - 1] == text[x1 - 1] and other[y0 - 1] == text[x0 - 1]:
        x0, x1, y0 = x0 - 1, x1 - 1, y0 - 1
        if text[x0] in "<[":
            best = (x0, x1, y0)
    if best is None:
        return o
    x0, x1, y0 = best
    return Op(y0, y0, x0, x1) if o.a0 == o.a1 else Op(x0, x1, y0, y0)


def _offsets(segs: Sequence[str], start: int) -> list[int]:
    out = [start]
    for x in segs:
        out.append(out[-1] + len(x))
    return out


def _merge(ops: list[Op]) -> list[Op]:
    out: list[Op] = []
    for o in ops:
        if out and out[-1].a1 == o.a0 and out[-1].b1 == o.b0:
            out[-1] = Op(out[-1].a0, o.a1, out[-1].b0, o.b1)
        else:
            out.append(o)
    return out


def cost(a: str, b: str) -> int:
    """How far apart two renders are: the characters in non-equal regions (0 when equal)."""
    return sum(o.size() for o in diff_ops(a, b))


def distance(a: str, b: str) -> tuple[int, int]:
    """(number of differing regions, differing characters): a normalisation step must lower the first."""
    ops = diff_ops(a, b)
    return len(ops), sum(o.size() for o in ops)


# ---------------------------------------------------------------------------------------------------- presentation
def visible(s: str) -> str:
    """Make whitespace and invisible characters readable in a one-line message; control tokens stay as they are."""
    out = []
    for ch in s:
        if ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\\":
            out.append("\\\\")
        elif ch != " " and unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp", "Cs", "Co", "Cn"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def snippet(text: str, start: int, end: int, *, context: int = 24, limit: int = 60) -> str:
    """``…before⟦changed⟧after…`` with invisible characters escaped; an empty change shows as ``⟦⟧``."""
    changed = text[start:end]
    if len(changed) > limit:
        changed = changed[: limit // 2] + "…" + changed[-limit // 2:]
    lo = max(0, start - context)
    hi = min(len(text), end + context)
    return (("…" if lo > 0 else "") + visible(text[lo:start]) + "⟦" + visible(changed) + "⟧"
            + visible(text[end:hi]) + ("…" if hi < len(text) else ""))


# ------------------------------------------------------------------------------------------------ text normalisers
def leading_token(text: str, candidates: Iterable[str]) -> str | None:
    for t in candidates:
        if t and text.startswith(t):
            return t
    return None


def trailing_token(text: str, candidates: Iterable[str]) -> str | None:
    for t in candidates:
        if t and text.endswith(t):
            return t
    return None


def one_sided_prefix(a: str, b: str, candidates: Iterable[str]) -> tuple[str, str] | None:
    """A BOS-like token that starts exactly one of the texts: ``(side, token)`` with side ``template``/``llama``."""
    cands = [c for c in dict.fromkeys(candidates) if c]
    ta, tb = leading_token(a, cands), leading_token(b, cands)
    if ta and tb is None:
        return "template", ta
    if tb and ta is None:
        return "llama", tb
    return None


def one_sided_suffix(a: str, b: str, candidates: Iterable[str], *, tail: int = 16) -> tuple[str, str] | None:
    """An EOS-like token that ends exactly one text *in addition to* an otherwise equal ending.

    ``...<|end|>\n<|endoftext|>`` against ``...<|end|>\n`` qualifies; ``...Paris.<EOS>`` against ``...Paris.</s>``
    does not (that is a different end-of-turn token, not an extra one).
    """
    cands = [c for c in dict.fromkeys(candidates) if c]
    ta, tb = trailing_token(a, cands), trailing_token(b, cands)
    if ta and tb is None:
        rest = a[: len(a) - len(ta)]
        if rest[-tail:] == b[-tail:]:
            return "template", ta
    if tb and ta is None:
        rest = b[: len(b) - len(tb)]
        if rest[-tail:] == a[-tail:]:
            return "llama", tb
    return None


# ------------------------------------------------------------------------------------------ message transformations
Messages = tuple[tuple[str, str], ...]   # (role, content) pairs: hashable, so renders can be cached


def as_pairs(messages: Iterable[dict]) -> Messages:
    return tuple((str(m.get("role", "")), m.get("content") if isinstance(m.get("content"), str) else "")
                 for m in messages)


def as_dicts(pairs: Messages) -> list[dict]:
    return [{"role": r, "content": c} for r, c in pairs]


def cut_at_nul(pairs: Messages) -> tuple[Messages, list[int]]:
    """What llama.cpp sees: each role and content cut at its first NUL; also the indices that changed."""
    out, changed = [], []
    for i, (r, c) in enumerate(pairs):
        r2, c2 = r.split("\0", 1)[0], c.split("\0", 1)[0]
        if (r2, c2) != (r, c):
            changed.append(i)
        out.append((r2, c2))
    return tuple(out), changed


def trim_roles(pairs: Messages, roles: Iterable[str], *, unicode: bool = False) -> tuple[Messages, list[int]]:
    """Strip the content of messages with these roles (C whitespace, or all Unicode whitespace)."""
    roles = set(roles)
    out, changed = [], []
    for i, (r, c) in enumerate(pairs):
        c2 = (c.strip() if unicode else c_strip(c)) if r in roles else c
        if c2 != c:
            changed.append(i)
        out.append((r, c2))
    return tuple(out), changed


def system_index(pairs: Messages) -> int | None:
    for i, (r, _) in enumerate(pairs):
        if r == "system":
            return i
    return None


def drop_system(pairs: Messages) -> Messages:
    return tuple(p for p in pairs if p[0] != "system")


def fold_system(pairs: Messages, *, into: str, sep: str, trim: bool = False) -> Messages | None:
    """Move the (first) system message into the first or last user message as ``sys + sep + user``."""
    si = system_index(pairs)
    if si is None:
        return None
    users = [i for i, (r, _) in enumerate(pairs) if r == "user"]
    if not users:
        return None
    target = users[0] if into == "first" else users[-1]
    sys_text = pairs[si][1]
    if trim:
        sys_text = c_strip(sys_text)
    out = []
    for i, (r, c) in enumerate(pairs):
        if i == si:
            continue
        out.append((r, sys_text + sep + c) if i == target else (r, c))
    return tuple(out)


def append_to_system(pairs: Messages, suffix: str) -> Messages | None:
    si = system_index(pairs)
    if si is None:
        return None
    return tuple((r, c + suffix) if i == si else (r, c) for i, (r, c) in enumerate(pairs))


# ------------------------------------------------------------------------------------------------ residual regions
def content_spans(text: str, pairs: Messages) -> list[tuple[int, int, int]]:
    """Where each non-empty message content occurs in ``text``, in order: ``(message index, start, end)``."""
    spans = []
    pos = 0
    for i, (_, c) in enumerate(pairs):
        if not c:
            continue
        j = text.find(c, pos)
        if j < 0:
            stripped = c_strip(c)
            j = text.find(stripped, pos) if stripped else -1
            if j < 0:
                continue
            c = stripped
        spans.append((i, j, j + len(c)))
        pos = j + len(c)
    return spans


def overlaps(spans: Iterable[tuple[int, int, int]], start: int, end: int) -> bool:
    return any(s < end and start < e for _, s, e in spans) if end > start else False


def first_turn_start(spans: list[tuple[int, int, int]], pairs: Messages) -> int | None:
    """Start of the first non-system message's content."""
    for i, s, _ in spans:
        if pairs[i][0] != "system":
            return s
    return None


def message_at(spans: list[tuple[int, int, int]], pos: int) -> int | None:
    """The message whose content holds ``pos``; else the one whose content ends last before it; else the first."""
    before = None
    for i, s, e in spans:
        if s <= pos < e:
            return i
        if e <= pos:
            before = i
    if before is not None:
        return before
    return spans[0][0] if spans else None


def template_literals_only(inserted: str, source: str) -> bool:
    """True when every non-whitespace segment of ``inserted`` is written literally in the template source."""
    segs = [x for x in segments(inserted) if not x.isspace()]
    if not segs:
        return False
    return all(x in source for x in segs)
