"""K and M checks: small pure functions over one encoded row.

Every function takes plain data (the rendered text, token ids, character offsets, labels, where each message's
content sits in the text) plus a :class:`TokenContext` describing the tokenizer/template pair, and yields
:class:`Finding` s located by line and JSON pointer. Nothing here renders, tokenizes or raises on bad data: the
token stage (``validator/token_stage.py``) computes the inputs in batches and calls these.
"""

from __future__ import annotations

import operator
import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from tmplcheck.validator.findings import Finding, finding

IGNORE = -100
ZWNJ = "\u200c"  # inserted after the first character of a control string to make it plain text


@dataclass(frozen=True)
class Turn:
    """Where one message's content sits in the rendered text (``start == -1`` when it could not be found)."""

    index: int
    role: str
    start: int
    end: int
    pointer: str = ""          # JSON pointer of the content field
    role_pointer: str = ""     # JSON pointer of the role field

    @property
    def found(self) -> bool:
        return self.start >= 0


@dataclass
class TokenContext:
    """What the checks need to know about the tokenizer/template pair; built once per gate run."""

    path: str = ""
    bos_id: int | None = None
    bos_token: str | None = None
    bos_expected: bool = False            # the model family uses BOS (template declares one, or tokenizer adds it)
    #: the rows are encoded without the post-processor (apply_chat_template), the template writes no BOS, and the
    #: tokenizer's post-processor adds one: serving (llama.cpp, tokenizer(prompt)) adds a BOS training lacks (K020)
    bos_serving_only: bool = False
    eot_ids: frozenset[int] = frozenset()  # ids of the template's end-of-turn strings
    stop_ids: frozenset[int] = frozenset()  # inference stop set: eos + generation config eos ids
    special_ids: frozenset[int] = frozenset()  # every control/added-special id of the tokenizer
    special_strings: tuple[str, ...] = ()     # their strings (for K006)
    header_ids: frozenset[int] = frozenset()  # first ids of the role headers / generation prompt (turn openers)
    max_length: int | None = None
    id_to_token: dict[int, str] = field(default_factory=dict)  # names for messages (special ids at least)
    _special_re: re.Pattern | None = field(default=None, repr=False)

    def name(self, i: int) -> str:
        s = self.id_to_token.get(i)
        return f"{s!r}({i})" if s is not None else str(i)

    @property
    def special_re(self) -> re.Pattern | None:
        if self._special_re is None and self.special_strings:
            alts = sorted({s for s in self.special_strings if s}, key=len, reverse=True)
            self._special_re = re.compile("|".join(map(re.escape, alts)))
        return self._special_re


def _where(path: str, line: int, pointer: str = "") -> dict:
    return {"path": path, "line": line, "pointer": pointer}


# ------------------------------------------------------------------------------------------------- template level
def check_special_tokens(strings: Iterable[str], encode, *, path: str = "", template: str = "") -> Iterator[Finding]:
    """K001: each control string the template writes must encode to exactly one id.

    ``encode(s) -> list[int]`` encodes without adding special tokens.
    """
    for s in dict.fromkeys(x for x in strings if x):
        ids = list(encode(s))
        if len(ids) != 1:
            yield finding("K001", f"template {template or '?'} writes {s!r}, which this tokenizer encodes as "
                                  f"{len(ids)} ids {ids[:12]}{'...' if len(ids) > 12 else ''}",
                          hint="pair the template with its own tokenizer, or add the string as a special token",
                          data={"string": s, "ids": ids}, **_where(path, 0))


# ------------------------------------------------------------------------------------------------------ row level
def check_bos(ids: Sequence[int], ctx: TokenContext, *, line: int, pointer: str = "") -> Iterator[Finding]:
    """K002 two BOS at the start; K003 no BOS where the model expects one."""
    if ctx.bos_id is None:
        return
    if len(ids) >= 2 and ids[0] == ctx.bos_id and ids[1] == ctx.bos_id:
        yield finding("K002", f"row starts with {ctx.name(ctx.bos_id)} twice: the template writes it and the "
                              "tokenizer adds it", hint="encode with add_special_tokens=False or drop {{ bos_token }}",
                      **_where(ctx.path, line, pointer))
    elif ctx.bos_serving_only and (not ids or ids[0] != ctx.bos_id):
        first = ctx.name(ids[0]) if ids else "nothing"
        yield finding("K020", f"row starts with {first}: apply_chat_template (and `tmplcheck train`) encode the "
                              f"render without special tokens and the template writes no BOS, but this tokenizer "
                              f"adds {ctx.name(ctx.bos_id)} when it encodes text, as llama.cpp does when serving: "
                              "training and serving disagree on BOS",
                      hint="write {{ bos_token }} in the template, or serve without BOS (llama.cpp: "
                           "tokenizer.ggml.add_bos_token false)", **_where(ctx.path, line, pointer))
    elif ctx.bos_expected and (not ids or ids[0] != ctx.bos_id):
        first = ctx.name(ids[0]) if ids else "nothing"
        yield finding("K003", f"row starts with {first}, not {ctx.name(ctx.bos_id)}",
                      hint="let the tokenizer add BOS or write {{ bos_token }} once", **_where(ctx.path, line, pointer))


class TokenIndex:
    """Character → token lookups over an encoding's offsets, for the tokens that carry text: special tokens added by
    post-processing have (0, 0), and ``special_mask`` (the encoding's special-tokens mask), when given, leaves out
    every token it marks. Shared by the labels (``tokens.finish_encoding``) and the checks here."""

    def __init__(self, offsets: Sequence[tuple[int, int]], special_mask: Sequence[int] | None = None):
        self.offsets = offsets
        skip = special_mask or ()

        def out(i: int) -> bool:
            return offsets[i][1] <= offsets[i][0] or (bool(skip) and bool(skip[i]))

        # such tokens sit at the ends, so the fast path slices them off and checks the middle with C-level map/min
        lo, hi = 0, len(offsets)
        while lo < hi and out(lo):
            lo += 1
        while hi > lo and out(hi - 1):
            hi -= 1
        starts, ends = (list(x) for x in zip(*offsets[lo:hi])) if hi > lo else ([], [])
        if not starts or (min(map(operator.sub, ends, starts)) > 0 and not any(skip[lo:hi])):
            self.real: Sequence[int] = range(lo, hi)
            self.starts, self.ends = starts, ends
        else:
            self.real = [i for i in range(len(offsets)) if not out(i)]
            self.starts = [offsets[i][0] for i in self.real]
            self.ends = [offsets[i][1] for i in self.real]

    def copy_labels(self, labels: list[int], ids: Sequence[int], lo: int, hi: int) -> None:
        """labels[j] = ids[j] for the text tokens at index positions [lo, hi)."""
        if hi <= lo:
            return
        if isinstance(self.real, range):
            a, b = self.real[lo], self.real[hi - 1] + 1
            labels[a:b] = ids[a:b]
        else:
            for k in range(lo, hi):
                j = self.real[k]
                labels[j] = ids[j]

    def overlapping(self, a: int, b: int) -> tuple[int, int] | None:
        """[first, last+1) of token indices whose text overlaps chars [a, b)."""
        k0 = bisect_right(self.ends, a)           # first token ending after a
        k1 = bisect_left(self.starts, b)          # first token starting at/after b
        if k0 >= k1:
            return None
        return self.real[k0], self.real[k1 - 1] + 1

    def first_at_or_after(self, pos: int) -> int | None:
        """Index of the first text token whose end is past ``pos`` (the token holding or following ``pos``)."""
        k = bisect_right(self.ends, pos)
        return self.real[k] if k < len(self.real) else None

    def straddles(self, pos: int) -> int | None:
        """Index of a token that starts before ``pos`` and ends after it (a merge across ``pos``)."""
        k = bisect_right(self.starts, pos - 1) - 1  # last token starting before pos
        if 0 <= k < len(self.real) and self.ends[k] > pos:
            return self.real[k]
        return None

    def inside(self, start: int, end: int) -> range:
        """Positions (in ``real``) of tokens lying fully inside [start, end)."""
        lo = bisect_left(self.starts, start)
        hi = bisect_right(self.ends, end)
        return range(lo, max(lo, hi))


def find_end_of_turns(turns: Sequence[Turn], ids: Sequence[int], idx: TokenIndex, ctx: TokenContext,
                      text_len: int) -> dict[int, int | None]:
    """For each found assistant turn: the token index of the control token that follows its content (or None).

    The candidate is the first special token after the content end, before the next message's content starts.
    """
    out: dict[int, int | None] = {}
    starts = sorted(t.start for t in turns if t.found)
    last_end = max((t.end for t in turns if t.found), default=0)
    for t in turns:
        if t.role != "assistant" or not t.found:
            continue
        nxt = next((s for s in starts if s > t.start and s >= t.end), None)
        found = None
        k = bisect_right(idx.ends, t.end)  # first text token ending after the content end
        while k < len(idx.real):
            if nxt is not None and idx.starts[k] >= nxt:
                break
            ti = idx.real[k]
            if ids[ti] in ctx.special_ids or ids[ti] in ctx.eot_ids:
                found = ti
                break
            k += 1
        if found is None and t.end >= last_end:
            # a special token appended by the post-processor (zero width, at the very end)
            j = len(ids) - 1
            while j > 0 and idx.offsets[j][1] <= idx.offsets[j][0]:
                if ids[j] in ctx.special_ids:
                    found = j
                j -= 1
        out[t.index] = found
    return out


def is_end_of_turn(tok: int, ctx: TokenContext) -> bool:
    """Whether a control token closes an assistant turn: one of the template's end-of-turn ids; when the template
    names none, any control token that is not a turn opener (a header start)."""
    if ctx.eot_ids:
        return tok in ctx.eot_ids
    return tok not in ctx.header_ids


def accepted(eots: dict[int, int | None], ids: Sequence[int], ctx: TokenContext) -> dict[int, int | None]:
    """Only the candidates that are end-of-turn tokens (see :func:`is_end_of_turn`)."""
    return {k: (v if v is not None and is_end_of_turn(ids[v], ctx) else None) for k, v in eots.items()}


def check_end_of_turn(turns: Sequence[Turn], ids: Sequence[int], eots: dict[int, int | None], ctx: TokenContext,
                      *, line: int) -> Iterator[Finding]:
    """K004 an assistant turn with no end-of-turn id; K005 its end-of-turn id is not a stop id.

    ``eots`` are the candidates from :func:`find_end_of_turns` (the first control token after each content)."""
    for t in turns:
        if t.index not in eots:
            continue
        e = eots[t.index]
        where = _where(ctx.path, line, t.pointer)
        if e is None:
            yield finding("K004", f"assistant message {t.index} is not followed by an end-of-turn token",
                          hint="end every assistant turn with the end-of-turn string", **where)
            continue
        tok = ids[e]
        if not is_end_of_turn(tok, ctx):
            want = ", ".join(ctx.name(i) for i in sorted(ctx.eot_ids)) or "an end-of-turn token"
            yield finding("K004", f"assistant message {t.index} is followed by {ctx.name(tok)}, not by {want}",
                          hint="end every assistant turn with the end-of-turn string", **where)
            continue
        if ctx.stop_ids and tok not in ctx.stop_ids:
            stops = ", ".join(ctx.name(i) for i in sorted(ctx.stop_ids))
            yield finding("K005", f"assistant message {t.index} ends with {ctx.name(tok)}, which is not in the "
                                  f"inference stop set ({stops}): generation will not stop",
                          hint="give the model dir with generation_config.json, or add the id to its eos_token_id",
                          data={"token": tok, "stop_ids": sorted(ctx.stop_ids)}, **where)


def _locate(turns: Sequence[Turn], pos: int) -> tuple[Turn | None, str]:
    """Which message a character belongs to: ('content' of turn, or the 'header' before it, or 'trailer')."""
    for t in turns:
        if not t.found:
            continue
        if pos < t.start:
            return t, "header"
        if pos < t.end:
            return t, "content"
    last = next((t for t in reversed(turns) if t.found), None)
    return last, "trailer"


def expected_mask(text: str, ids: Sequence[int], offsets: Sequence[tuple[int, int]], turns: Sequence[Turn],
                  eots: dict[int, int | None], idx: TokenIndex | None = None) -> tuple[list[int], list[int]]:
    """The structural mask: 1 must be trained, 0 must not, -1 don't care (boundary merges, whitespace after eot).

    Returns (mask, straddling token indices). Works on token ranges (bisect over offsets), not token by token.
    """
    n = len(ids)
    idx = idx or TokenIndex(offsets)
    mask = [0] * n
    straddle: list[int] = []
    for t in turns:
        if t.role != "assistant" or not t.found:
            continue
        if t.end > t.start:
            r = idx.inside(t.start, t.end)
            if len(r):
                a, b = idx.real[r.start], idx.real[r.stop - 1] + 1
                mask[a:b] = [1] * (b - a)
            for pos in (t.start, t.end):
                i = idx.straddles(pos)
                if i is not None:
                    mask[i] = -1
                    straddle.append(i)
        e = eots.get(t.index)
        if e is None:
            continue
        mask[e] = 1
        # tokens between the content end and the end-of-turn (template whitespace) may go either way
        for j in range(e - 1, -1, -1):
            s, en = offsets[j]
            if en <= t.end or en <= s:
                break
            if not text[s:en].strip():
                mask[j] = -1
        # whitespace right after the end-of-turn (chatml's "\n") may go either way
        for j in range(e + 1, n):
            s, en = offsets[j]
            if en <= s or text[s:en].strip():
                break
            mask[j] = -1
    # post-processor tokens at the very end (an appended EOS) may go either way
    for j in range(n - 1, 0, -1):
        s, en = offsets[j]
        if en > s:
            break
        mask[j] = -1
    return mask, sorted(set(straddle))


def _agrees(mask: list[int], got: list[bool]) -> bool:
    """Whether ``got`` equals the mask wherever the mask cares (list comparisons run in C; -1 is rare)."""
    want = [m == 1 for m in mask]
    if want == got:
        return True
    if -1 not in mask:
        return False
    for i, m in enumerate(mask):
        if m == -1:
            want[i] = got[i]
    return want == got


def check_mask(text: str, ids: Sequence[int], offsets: Sequence[tuple[int, int]], labels: Sequence[int],
               turns: Sequence[Turn], eots: dict[int, int | None], ctx: TokenContext, *, line: int,
               source: str = "labels", expected: list[int] | None = None) -> Iterator[Finding]:
    """M001 trained outside the assistant turns, M002 assistant content masked, M003 end-of-turn masked,
    M004 nothing trained. Tokens straddling an assistant content edge are left out (M005 reports them)."""
    labels = list(labels)
    if labels.count(IGNORE) == len(labels):
        yield finding("M004", f"no token of the row is trained ({source})",
                      **_where(ctx.path, line, ""))
        return
    if any(not t.found for t in turns):
        return  # K012 already explains the row; a mask comparison would only cascade
    mask = expected if expected is not None else expected_mask(text, ids, offsets, turns, eots)[0]
    trained = [lab != IGNORE for lab in labels]
    if _agrees(mask, trained):
        return
    eot_at = {e: idx for idx, e in eots.items() if e is not None}
    over: dict[int, list[int]] = {}
    under: dict[int, list[int]] = {}
    for i, (m, tr) in enumerate(zip(mask, trained)):
        if m == -1 or bool(m) == tr:
            continue
        if i in eot_at and not tr:
            t = next(x for x in turns if x.index == eot_at[i])
            yield finding("M003", f"the end-of-turn {ctx.name(ids[i])} of assistant message {t.index} is not "
                                  f"trained ({source})", **_where(ctx.path, line, t.pointer))
            continue
        s, _e = offsets[i]
        t, part = _locate(turns, s)
        key = t.index if t else -1
        (over if tr else under).setdefault(key, []).append(i)
    for key, toks in over.items():
        t = next((x for x in turns if x.index == key), None)
        s, e = offsets[toks[0]]
        s = max(s, 0)
        part = _locate(turns, s)[1] if t else "text"
        what = f"{t.role} message {t.index}'s {part}" if t else "template text"
        yield finding("M001", f"{len(toks)} token(s) of {what} are trained ({source}), first {ctx.name(ids[toks[0]])}"
                              f" at chars {s}-{e}: {text[s:e]!r}",
                      data={"token_indices": toks[:50]},
                      **_where(ctx.path, line, (t.pointer if part == "content" else t.role_pointer) if t else ""))
    for key, toks in under.items():
        t = next((x for x in turns if x.index == key), None)
        s, e = offsets[toks[0]]
        yield finding("M002", f"{len(toks)} token(s) of assistant message {key}'s content are not trained "
                              f"({source}), first at chars {s}-{e}: {text[s:e]!r}",
                      data={"token_indices": toks[:50]}, **_where(ctx.path, line, t.pointer if t else ""))


def check_generation_mask(text: str, ids: Sequence[int], offsets: Sequence[tuple[int, int]],
                          spans: Sequence[tuple[int, int]], turns: Sequence[Turn], eots: dict[int, int | None],
                          ctx: TokenContext, *, line: int, expected: list[int] | None = None,
                          idx: TokenIndex | None = None) -> Iterator[Finding]:
    """M006: the ``{% generation %}`` character spans, mapped to tokens, against the structural mask."""
    if any(not t.found for t in turns):
        return
    idx = idx or TokenIndex(offsets)
    gen = [False] * len(ids)
    for a, b in spans:  # tokens whose first character is inside a span (transformers' char_to_token rule)
        lo = bisect_left(idx.starts, a)
        hi = bisect_left(idx.starts, b)
        if hi > lo:
            x, y = idx.real[lo], idx.real[hi - 1] + 1
            gen[x:y] = [True] * (y - x)
    mask = expected if expected is not None else expected_mask(text, ids, offsets, turns, eots, idx)[0]
    if [m == 1 for m in mask] == gen:
        return
    eot_set = {e for e in eots.values() if e is not None}
    # where each assistant turn's end-of-turn token is, and where the next message starts (chars), to tell the
    # documented differences (GENERATION_MASK_DECISIONS) from real ones
    ends = sorted(offsets[e][1] for e in eot_set)
    starts = sorted(t.start for t in turns if t.found)
    prompt = _prompt_marked(gen, offsets, turns, idx)
    kinds: dict[str, list[int]] = {}
    explained: dict[str, list[int]] = {}
    for i, (m, g) in enumerate(zip(mask, gen)):
        if bool(m == 1) == g:
            continue
        if m == -1 and not g:
            continue   # whitespace after an end-of-turn or a straddling token left unmarked: either way is fine
        s, e = offsets[i]
        if g and m != 1:
            why = _explained_extra(text, i, s, e, ids[i], ends, starts, prompt, ctx)
            if why is not None:
                explained.setdefault(why, []).append(i)
                continue
        if m == -1:
            continue   # a straddling token (M005 says it)
        if i in eot_set:
            kinds.setdefault("end-of-turn not marked", []).append(i)
        elif g:
            kinds.setdefault("marks template or non-assistant text", []).append(i)
        else:
            kinds.setdefault("leaves assistant content unmarked", []).append(i)
    if explained and not kinds:
        first = min(i for v in explained.values() for i in v)
        s, e = offsets[first]
        desc = "; ".join(f"{k} ({len(v)} tokens)" for k, v in explained.items())
        yield finding("M023", f"the template's {{% generation %}} mask also trains {desc}, which tmplcheck's mask "
                              f"leaves out by a documented decision; first at token {first} {ctx.name(ids[first])} "
                              f"chars {s}-{e}: {text[s:e]!r}",
                      data={"kinds": {k: v[:50] for k, v in explained.items()}},
                      **_where(ctx.path, line, ""))
    if not kinds:
        return
    first = min(i for v in kinds.values() for i in v)
    s, e = offsets[first]
    t, _ = _locate(turns, s)
    desc = "; ".join(f"{k} ({len(v)} tokens)" for k, v in kinds.items())
    yield finding("M006", f"the template's {{% generation %}} mask {desc}; first at token {first} "
                          f"{ctx.name(ids[first])} chars {s}-{e}: {text[s:e]!r}",
                  data={"kinds": {k: v[:50] for k, v in kinds.items()}},
                  **_where(ctx.path, line, t.pointer if t else ""))


#: How tmplcheck's mask differs, on purpose, from a ``{% generation %}`` mask that marks more (TRL's training
#: templates): each is what the model must *not* learn to generate, and each is reported as M023, never silently.
GENERATION_MASK_DECISIONS = {
    "template text after the end-of-turn token": (
        "ChatML's \\n after <|im_end|>, Phi-3's \\n after <|end|>: generation stops at the end-of-turn token, so "
        "the model never writes what follows it; the next prompt (or nothing) does"),
    "an end-of-sequence token after the last end-of-turn token": (
        "Phi-3's <|endoftext|> after the final <|end|>: inference stops at <|end|>; training the model to write "
        "<|endoftext|> after it teaches a second stop the server never reads"),
    "text the generation prompt already holds": (
        "Qwen2.5's \\n after <|im_start|>assistant, GPT-OSS's <|start|>assistant, Qwen3.5's <think>\\n: the "
        "server sends it as part of the prompt (add_generation_prompt), so the model never generates it"),
}


def _prompt_marked(gen: list[bool], offsets, turns: Sequence[Turn], idx: TokenIndex) -> set[int]:
    """Marked tokens that the generation prompt holds: the run of marked tokens right before an assistant turn's
    generated part, after the previous message's text (the render up to that part *is* the inference prompt)."""
    out: set[int] = set()
    found = sorted((t for t in turns if t.found), key=lambda t: t.start)
    for k, t in enumerate(found):
        if t.role != "assistant":
            continue
        floor = found[k - 1].end if k else 0
        j = bisect_left(idx.starts, t.start)
        j = idx.real[j] if j < len(idx.real) else len(gen)
        j -= 1
        while j >= 0 and gen[j] and offsets[j][0] >= floor and offsets[j][1] <= t.start:
            out.add(j)
            j -= 1
    return out


def _explained_extra(text: str, i: int, s: int, e: int, tok: int, ends, starts, prompt: set[int],
                     ctx: TokenContext) -> str | None:
    """Which documented decision (``GENERATION_MASK_DECISIONS``) explains token ``i``, which a ``{% generation %}``
    mask trains and tmplcheck's does not; None when none does. ``ends``: char ends of the assistant turns'
    end-of-turn tokens (sorted); ``starts``: char starts of every located message (sorted)."""
    if i in prompt:
        return "text the generation prompt already holds"
    k = bisect_left(ends, s + 1) - 1
    if k < 0:
        return None
    prev_end = ends[k]
    nxt = next((x for x in starts if x >= max(e, s + 1) and x >= prev_end), None)
    if s >= prev_end and (nxt is None or e <= nxt):
        if not text[s:e].strip():
            return "template text after the end-of-turn token"
        if nxt is None and (tok in ctx.stop_ids or tok in ctx.special_ids):
            return "an end-of-sequence token after the last end-of-turn token"
    return None


def check_boundary_merges(ids: Sequence[int], idx: TokenIndex, turns: Sequence[Turn], ctx: TokenContext, *,
                          text: str, line: int) -> Iterator[Finding]:
    """M005: a token spans the start or end of an assistant turn's content and holds template text that is not
    whitespace, so no mask can separate them. (SentencePiece's "▁word" carrying the template's space, or a newline
    run, is not a mask problem; where it changes what inference sees, K009 reports it.)"""
    for t in turns:
        if t.role != "assistant" or not t.found or t.end == t.start:
            continue
        for edge, pos in (("start", t.start), ("end", t.end)):
            i = idx.straddles(pos)
            if i is None:
                continue
            s, e = idx.offsets[i]
            outside = text[s:t.start] if edge == "start" else text[t.end:e]
            if not outside.strip():
                continue
            yield finding("M005", f"token {ctx.name(ids[i])} ({text[s:e]!r}) spans the {edge} of assistant message "
                                  f"{t.index}'s content, joining it with template text {outside!r}: the mask cannot "
                                  "separate them", data={"token_index": i}, **_where(ctx.path, line, t.pointer))


def check_generation_point(ids: Sequence[int], idx: TokenIndex, answer: Turn, prompt_len: int, ctx: TokenContext,
                           *, text: str, line: int) -> Iterator[Finding]:
    """K009: a token spans the end of the inference prompt (``prompt_len`` chars, the generation prompt included):
    the row's tokens there differ from what the model sees when it starts generating ``answer``."""
    i = idx.straddles(prompt_len)
    if i is None:
        return
    s, e = idx.offsets[i]
    yield finding("K009", f"token {ctx.name(ids[i])} ({text[s:e]!r}) merges the end of the generation prompt with "
                          f"the start of assistant message {answer.index}; at inference the prompt ends at char "
                          f"{prompt_len - s} of this token, so the model is trained after a context it never sees",
                  hint="strip leading whitespace from the content", data={"token_index": i},
                  **_where(ctx.path, line, answer.pointer))


def escape_control_strings(content: str, specials: Iterable[str] | re.Pattern) -> str:
    """``content`` with every control-token string made plain text (a zero-width non-joiner after its first char)."""
    rx = specials if isinstance(specials, re.Pattern) else re.compile(
        "|".join(map(re.escape, sorted(set(specials), key=len, reverse=True))))
    return rx.sub(lambda m: m.group()[0] + ZWNJ + m.group()[1:], content)


def check_control_in_content(messages: Sequence[tuple[int, str, str, str]], ctx: TokenContext, *, line: int,
                             encode=None) -> Iterator[Finding]:
    """K006: control-token strings inside content. ``messages`` holds (index, role, content, pointer).

    ``encode(s) -> list[int]`` (optional) gives the ids the escaped string would encode to, for the hint.
    """
    rx = ctx.special_re
    if rx is None:
        return
    for index, role, content, pointer in messages:
        m = rx.search(content)
        if not m:
            continue
        every = [x.group() for x in rx.finditer(content)]
        esc = m.group()[0] + ZWNJ + m.group()[1:]
        data = {"offset": m.start(), "strings": sorted(set(every)), "escaped": esc}
        extra = ""
        if encode is not None:
            data["escaped_ids"] = list(encode(esc))
            extra = f" (escaped as {esc!r} it is {len(data['escaped_ids'])} plain ids)"
        yield finding("K006", f"{role} message {index} contains {m.group()!r} at offset {m.start()}; it encodes as "
                              f"the real control token{extra}" + (f", {len(every)} occurrences" if len(every) > 1 else ""),
                      hint="remove it, or escape it: escape_control_strings() puts U+200C after its first character",
                      data=data, **_where(ctx.path, line, pointer))


def check_max_length(ids: Sequence[int], turns: Sequence[Turn], eots: dict[int, int | None],
                     idx: TokenIndex, ctx: TokenContext, *, line: int) -> Iterator[Finding]:
    """K007 the row is over --max-length; K008 the assistant turn the cut leaves without its end-of-turn."""
    limit = ctx.max_length
    if not limit or len(ids) <= limit:
        return
    yield finding("K007", f"row is {len(ids)} tokens, over --max-length {limit}", data={"tokens": len(ids)},
                  **_where(ctx.path, line, ""))
    for t in turns:
        if t.role != "assistant" or not t.found:
            continue
        first = idx.first_at_or_after(t.start)
        e = eots.get(t.index)
        if first is None or first >= limit or e is None:
            continue  # wholly cut away, or no end-of-turn at all (K004)
        if e >= limit:
            yield finding("K008", f"truncating at {limit} tokens keeps assistant message {t.index} from token "
                                  f"{first} but cuts its end-of-turn (token {e})",
                          hint="raise --max-length or drop/split the row", **_where(ctx.path, line, t.pointer))


def check_content_found(turns: Sequence[Turn], ctx: TokenContext, *, line: int) -> Iterator[Finding]:
    """K012: a message whose content could not be found in the render."""
    for t in turns:
        if not t.found:
            yield finding("K012", f"{t.role} message {t.index}'s content is not in the rendered text as written "
                                  "(the template trims, rewrites or drops it)", **_where(ctx.path, line, t.pointer))


def check_prefix(full_ids: Sequence[int], prompts: Iterable[tuple[Turn, str, Sequence[int], bool]],
                 ctx: TokenContext, *, line: int) -> Iterator[Finding]:
    """K011: each inference prompt (``(user turn, prompt text, prompt ids, text_is_prefix)``) must be a token
    prefix of the full training row. One finding per row (the first unstable prompt)."""
    for t, _text, pids, text_ok in prompts:
        n = len(pids)
        if list(full_ids[:n]) == list(pids):
            continue
        k = next((i for i, (a, b) in enumerate(zip(full_ids, pids)) if a != b), min(n, len(full_ids)))
        why = ("the template renders the history differently once more turns follow" if not text_ok else
               "the generation prompt tokenizes differently from the trained assistant header")
        got = ctx.name(full_ids[k]) if k < len(full_ids) else "end of row"
        yield finding("K011", f"prompt for the answer after {t.role} message {t.index} is not a token prefix of the "
                              f"row: first divergence at token {k} (prompt {ctx.name(pids[k]) if k < n else 'end'}, "
                              f"row {got}); {why}", data={"token_index": k, "text_prefix": text_ok},
                      **_where(ctx.path, line, t.role_pointer))
        return


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first position where two id sequences differ (None when equal)."""
    if list(a) == list(b):
        return None
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def check_llamacpp_ids(hf_ids: Sequence[int], lc_ids: Sequence[int], ctx: TokenContext, *, line: int,
                       text: str = "", offsets: Sequence[tuple[int, int]] = (), lc_name=None) -> Iterator[Finding]:
    """K010: HF and llama.cpp ids for the same rendered text (both without added special tokens)."""
    k = first_divergence(hf_ids, lc_ids)
    if k is None:
        return
    ctxt = ""
    if text and k < len(offsets):
        s = offsets[k][0]
        ctxt = f" near {text[max(0, s - 12):s + 12]!r}"
    hf_piece = [ctx.name(i) for i in hf_ids[k:k + 3]]
    lc_piece = [(lc_name(i) if lc_name else str(i)) for i in lc_ids[k:k + 3]]
    yield finding("K010", f"llama.cpp tokenizes the row differently from HF at token {k}{ctxt}: HF {hf_piece}, "
                          f"llama.cpp {lc_piece} ({len(hf_ids)} vs {len(lc_ids)} ids)",
                  data={"token_index": k}, **_where(ctx.path, line, ""))


# --------------------------------------------------------------------------------------------------- regular rows
def regular_row(text: str, ids: Sequence[int], starts, ends, lo: int, hi: int, turns: Sequence[Turn],
                eot_strings: Sequence[tuple[str, int | None]], ctx: TokenContext, *,
                boundaries: Sequence[int] = (), generation_spans: Sequence[tuple[int, int]] | None = None,
                monotonic: bool = False) -> int | None:
    """The trained-token count of a *regular* row, or None when the row needs the full checks.

    A row is regular when every content edge of an assistant turn (and each of ``boundaries``, the generation points)
    falls between two tokens, and the token right after each assistant content is exactly one of the template's
    end-of-turn strings (``eot_strings``: (string, its single id)), an end-of-turn id in the stop set. Then the
    structural mask is each assistant content's tokens plus that id, which is what the labels train, so K004, K005,
    K009 (at ``boundaries``), M001-M003 and M005 cannot fire, and with ``generation_spans`` equal to those spans
    neither can M006. ``turns`` must all be found, verbatim, sorted by position, every assistant turn trained;
    ``starts``/``ends`` are numpy arrays of the ids' character spans, ``[lo, hi)`` the ids that carry text (the rest
    are post-processor tokens); ``monotonic``: the caller knows every span is non-empty and they run in order (spans
    made from byte lengths are), else that is checked. The caller checks BOS, control strings in content, length
    and the sampled checks. Vectorised: a few array operations per row instead of a loop over tokens.
    """
    import numpy as np

    if hi <= lo:
        return None
    st, en = starts[lo:hi], ends[lo:hi]
    if not monotonic and (not bool((en > st).all()) or not bool((st[1:] >= st[:-1]).all())
                          or not bool((en[1:] >= en[:-1]).all())):
        # zero-width or non-monotonic spans (some non-byte-level tokenizers): not a simple cut of the text. (Spans
        # overlap only where byte-level tokens split one character: both carry that character's span.)
        return None
    asst = [t for t in turns if t.role == "assistant"]
    if not asst:
        return None  # nothing trained: M004 is the full checks' to say
    m = len(asst)
    pts = np.fromiter([t.start for t in asst] + [t.end for t in asst] + list(boundaries), dtype=np.int64)
    k = np.searchsorted(st, pts, "left")            # first text token starting at or after each point
    before = en[np.maximum(k - 1, 0)]
    if bool(((k > 0) & (before > pts)).any()):      # a token spans a content edge or a generation point
        return None
    n = len(st)
    trained = 0
    want: list[tuple[int, int]] = []
    for t, a, b in zip(asst, k[:m].tolist(), k[m:2 * m].tolist()):
        if b >= n or a >= b or st[b] != t.end:
            return None
        tok = ids[lo + b]
        hit = None
        for s, sid in eot_strings:
            if sid == tok and text.startswith(s, t.end) and en[b] == t.end + len(s):
                hit = s
                break
        if hit is None or not is_end_of_turn(tok, ctx) or (ctx.stop_ids and tok not in ctx.stop_ids):
            return None
        trained += b - a + 1
        want.append((t.start, t.end + len(hit)))
    if generation_spans is not None and sorted(tuple(x) for x in generation_spans) != want:
        return None
    return trained
