"""K checks (and the M checks' shared types): small pure functions over one encoded row.

Every function takes plain data (the rendered text, token ids, character offsets, labels, where each message's
content sits in the text) plus a :class:`TokenContext` describing the tokenizer/template pair, and yields
:class:`Finding` s located by line and JSON pointer. Nothing here renders, tokenizes or raises on bad data: the
token stage (``validator/token_stage.py``) computes the inputs in batches and calls these. The mask checks (M001-M006,
M023) are ``checks/masks.py``.
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
