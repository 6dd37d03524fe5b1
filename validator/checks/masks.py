"""M checks: the training mask of one encoded row against what each assistant turn generates.

``expected_mask`` is the structural mask (what each assistant turn generates, through its end-of-turn token);
``check_mask`` compares a row's labels with it (M001-M004), ``check_generation_mask`` a template's
``{% generation %}`` spans (M006, and M023 for the documented decisions in ``GENERATION_MASK_DECISIONS``),
``check_boundary_merges`` the tokens that straddle a content edge (M005). Pure functions over plain data, like the
K checks in ``checks/tokens.py``.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from tmplcheck.validator.checks.tokens import IGNORE, TokenContext, TokenIndex, Turn, _where
from tmplcheck.validator.findings import Finding, finding


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
                  eots: dict[int, int | None], idx: TokenIndex | None = None,
                  trained: frozenset[int] | None = None) -> tuple[list[int], list[int]]:
    """The structural mask: 1 must be trained, 0 must not, -1 don't care (boundary merges, whitespace after eot).

    ``trained``: the indices of the assistant messages whose turn is trained (``training_flags.trained_turns``:
    per-message ``weight``/``train`` flags and ``--train-on``); None: every assistant turn. An assistant turn left
    out is expected untrained, like any other message.
    Returns (mask, straddling token indices). Works on token ranges (bisect over offsets), not token by token.
    """
    n = len(ids)
    idx = idx or TokenIndex(offsets)
    mask = [0] * n
    straddle: list[int] = []
    for t in turns:
        if t.role != "assistant" or not t.found or (trained is not None and t.index not in trained):
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
    prompt = _prompt_marked(gen, offsets, turns, idx, text)
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
    # M006 says the markers disagree (once per file); each kind is the row's own finding under the code the labels
    # would get for it: template or non-assistant text trained (M001), assistant output untrained (M002), an
    # end-of-turn untrained (M003)
    yield finding("M006", f"the template's {{% generation %}} mask {desc}; first at token {first} "
                          f"{ctx.name(ids[first])} chars {s}-{e}: {text[s:e]!r}",
                  data={"kinds": {k: v[:50] for k, v in kinds.items()}},
                  **_where(ctx.path, line, t.pointer if t else ""))
    for kind, code in _KIND_CODES.items():
        toks = kinds.get(kind)
        if not toks:
            continue
        a, b = offsets[toks[0]]
        turn, part = _locate(turns, a)
        where = (turn.pointer if part == "content" else turn.role_pointer) if turn else ""
        yield finding(code, f"{len(toks)} token(s) {_KIND_WORDS[kind]} by the template's {{% generation %}} "
                            f"markers, first {ctx.name(ids[toks[0]])} at chars {a}-{b}: {text[a:b]!r}",
                      data={"token_indices": toks[:50], "source": "generation markers"},
                      **_where(ctx.path, line, where))


_KIND_CODES = {"marks template or non-assistant text": "M001", "leaves assistant content unmarked": "M002",
               "end-of-turn not marked": "M003"}
_KIND_WORDS = {"marks template or non-assistant text": "of template or non-assistant text are trained",
               "leaves assistant content unmarked": "of assistant output are not trained",
               "end-of-turn not marked": "of an end-of-turn are not trained"}


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
        "Qwen2.5's \\n after <|im_start|>assistant, Qwen3.5's <think>\\n: the server sends it as part of the prompt "
        "(add_generation_prompt), so the model never generates it. Markers that also take in the turn-opening header "
        "(<|im_start|>assistant, GPT-OSS's <|start|>assistant) are M006: they teach the model to open its own turn"),
}


#: a turn-opening control token (``<|im_start|>``, ``<|start|>``, ``<|start_header_id|>``, ``<start_of_turn>``...):
#: a marked run of prompt text holding one marks the turn's header, which is M006, not a documented decision
_HEADER_TOKEN = re.compile(r"<\|[^|<>]*\|>|<start_of_turn>|<\|?turn>?|\[INST\]")


def _prompt_marked(gen: list[bool], offsets, turns: Sequence[Turn], idx: TokenIndex, text: str = "") -> set[int]:
    """Marked tokens that the generation prompt holds: the run of marked tokens right before an assistant turn's
    generated part, after the previous message's text (the render up to that part *is* the inference prompt) —
    unless the run holds a turn-opening control token (then the markers train the role header: M006)."""
    out: set[int] = set()
    found = sorted((t for t in turns if t.found), key=lambda t: t.start)
    for k, t in enumerate(found):
        if t.role != "assistant":
            continue
        floor = found[k - 1].end if k else 0
        j = bisect_left(idx.starts, t.start)
        j = idx.real[j] if j < len(idx.real) else len(gen)
        j -= 1
        run = []
        while j >= 0 and gen[j] and offsets[j][0] >= floor and offsets[j][1] <= t.start:
            run.append(j)
            j -= 1
        if run and not _HEADER_TOKEN.search(text[offsets[run[-1]][0]:offsets[run[0]][1]]):
            out.update(run)
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
