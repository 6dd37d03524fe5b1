"""Where every message of a conversation sits in its render, and what each assistant turn generates.

``locate_messages`` finds each content in the render from the template's structure:

1. **sentinels** (fast path): the conversation is rendered with every string content replaced by a unique
   private-use sentinel; when putting the real contents (or their stripped form, for templates that ``trim``) back
   into that skeleton reproduces the real render byte for byte, every content's position is exact. Skeletons are
   cached per conversation *shape* (roles and every non-content field), so a dataset of similar rows costs one
   render per row plus a string comparison.
2. **prefix renders** (fallback, e.g. templates that look inside content): ``render(messages[:i+1])`` gives where
   each turn ends when it is a prefix of the full render; the content is searched inside its turn (as written,
   stripped, or as a JSON string for templates that ``tojson`` tool results).
3. **sequential search** (last resort): each content is searched after the previous one.

Then each assistant turn is set to what it *generates* (``assistant_regions``): from the end of the inference prompt
through its end-of-turn string — reasoning, content, tool calls — located from prompt renders, never by searching
for its content, wherever that differs from its content (rows with tool calls, reasoning or template arguments,
and every row of a template whose plain rows are not simple, ``_plain_rows_simple``).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Sequence

from tmplcheck.validator.render import errors_unshown, same_arguments
from tmplcheck.validator.skeleton import fill as _fill, has_sentinel_chars, skeleton as _skeleton

_SKELETON_CACHE_SIZE = 2048


@dataclass
class MessageSpan:
    index: int                         # position in the messages list
    role: str
    content_start: int | None          # char offsets of the content in ``text`` (None: not recoverable)
    content_end: int | None
    token_start: int | None = None     # tokens overlapping the content: [token_start, token_end)
    token_end: int | None = None
    eot_index: int | None = None       # index in ``ids`` of this assistant turn's end-of-turn token
    eot_char: tuple[int, int] | None = None   # where the end-of-turn string is in ``text``
    eot_string: str | None = None
    eot_single: bool = False           # the end-of-turn string is exactly one token (id == eot_id)
    eot_id: int | None = None
    trained: bool = False              # this message's tokens carry labels
    turn_start: int | None = None      # char span of the whole turn when prefix renders gave it
    turn_end: int | None = None
    straddle_start: int | None = None  # token crossing the content start boundary (template text + content)
    straddle_end: int | None = None    # token crossing the content end boundary
    method: str = "missing"            # "sentinel" | "sentinel-strip" | "prefix" | "search" | "turn" |
    #                                    "generated" (an assistant turn: what it generates, see assistant_regions)
    #                                    | "missing"
    truncated: bool = False            # with max_length: part of the content or its end-of-turn is cut off
    alone: str | None = None           # an assistant turn that renders otherwise once later turns follow (history
    #                                    rewritten): what it renders as when it is the last turn (generated part)
    prompt_setting: str | None = None  # the inference prompt is not a prefix of the row; this template argument
    #                                    setting makes it one ("" when none does)

    @property
    def found(self) -> bool:
        return self.content_start is not None


@dataclass
class Located:
    """Character structure of one render, before tokenization."""

    text: str
    spans: list[MessageSpan]


def _content_text(m: dict) -> str | None:
    c = m.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # typed content: only text parts are locatable as one string
        parts = [p.get("text") for p in c if isinstance(p, dict) and p.get("type") == "text"]
        if len(parts) == 1 and isinstance(parts[0], str):
            return parts[0]
    return None


def _trained(messages: Sequence[dict], train_on: str | None) -> frozenset[int]:
    """The assistant messages whose turn carries labels: their own ``weight``/``train`` flag, else ``train_on``
    (``validator/training_flags.py``, the one rule every mask follows)."""
    from tmplcheck.validator.training_flags import trained_turns

    return trained_turns(messages, train_on)


class _SkeletonCache:
    def __init__(self, size: int = _SKELETON_CACHE_SIZE):
        self.size = size
        self.data: OrderedDict[str, tuple[str, list[tuple[int, int]]] | None] = OrderedDict()

    def get(self, key):
        v = self.data.get(key, _MISS)
        if v is not _MISS:
            self.data.move_to_end(key)
        return v

    def put(self, key, value):
        self.data[key] = value
        if len(self.data) > self.size:
            self.data.popitem(last=False)


_MISS = object()
_CACHES: "dict[int, tuple[Any, _SkeletonCache]]" = {}


def _cache_for(template) -> _SkeletonCache:
    entry = _CACHES.get(id(template))
    if entry is None or entry[0] is not template:
        if len(_CACHES) > 64:
            _CACHES.clear()
        entry = _CACHES[id(template)] = (template, _SkeletonCache())
    return entry[1]


def _shape_key(messages: list[dict], render_kw: dict) -> Any:
    if not render_kw and all(len(m) == 2 and type(m.get("content")) is str and type(m.get("role")) is str
                             for m in messages):
        # the common case: role and a string content only (as a tuple; the general key below is a JSON string)
        return tuple((m["role"], bool(m["content"])) for m in messages)
    try:
        return json.dumps([[m.get("role"), {k: v for k, v in m.items() if k != "content"},
                            isinstance(m.get("content"), str), bool(m.get("content"))] for m in messages]
                          + [render_kw], sort_keys=True, default=str)
    except (TypeError, ValueError):
        return None


#: renders of prefixes of the conversation :func:`locate_messages` is locating (the turn boundaries and
#: :func:`assistant_regions` ask for the same ones)
_PREFIXES: ContextVar[dict | None] = ContextVar("tmplcheck_prefix_renders", default=None)


def _render_prefix(template, messages, n, render_kw, add_generation_prompt=False) -> str | None:
    memo = _PREFIXES.get()
    key = None
    if memo is not None:
        key = (id(messages), n, add_generation_prompt, tuple(sorted((k, id(v)) for k, v in render_kw.items())))
        if key in memo:
            return memo[key]
    try:
        with errors_unshown():
            out = template.render(messages[:n], add_generation_prompt=add_generation_prompt, **render_kw)
    except Exception:
        out = None
    if key is not None:
        memo[key] = out
    return out


def locate_messages(template, messages: Sequence[dict], *, render_kw: dict | None = None,
                    text: str | None = None, eots: Sequence[str] | None = None,
                    train_on: str | None = None) -> Located:
    """Render ``messages`` (unless ``text`` is given) and find each message's content in the render.

    With ``eots`` (the end-of-turn strings), assistant turns are located as what they generate
    (:func:`assistant_regions`) wherever that differs from their content: rows with fields beyond role and string
    content (tool calls, reasoning, template arguments), and every row of a template whose plain rows are not simple
    (:func:`_plain_rows_simple`). ``train_on``: which assistant turns are trained when a message has no flag of
    its own (``validator/training_flags.py``); each span's ``trained`` says it."""
    render_kw = dict(render_kw or {})
    messages = [dict(m) for m in messages]
    plain = not render_kw and all(len(m) == 2 and type(m.get("content")) is str for m in messages)
    token = _PREFIXES.set({})
    try:
        with same_arguments():   # (render_kw's objects are this call's, unchanged while it renders)
            return _locate(template, messages, render_kw, text, eots, plain, train_on)
    finally:
        _PREFIXES.reset(token)


def _locate(template, messages: list[dict], render_kw: dict, text: str | None, eots, plain: bool,
            train_on: str | None = None) -> Located:
    if text is None:
        text = template.render(messages, add_generation_prompt=False, **render_kw)
    trained = _trained(messages, train_on)
    spans = [MessageSpan(index=i, role=str(m.get("role")), content_start=None, content_end=None,
                         trained=i in trained) for i, m in enumerate(messages)]
    contents = {i: _content_text(m) for i, m in enumerate(messages)}
    locatable = [i for i, c in contents.items() if c and isinstance(messages[i].get("content"), str)
                 and not has_sentinel_chars(c)]

    # 1. sentinel skeleton (cached per shape)
    done = False
    if locatable:
        cache = _cache_for(template)
        key = _shape_key(messages, render_kw)
        sk = cache.get(key) if key is not None else _MISS
        if sk is _MISS:
            sk = _skeleton(template, messages, locatable, render_kw)
            if key is not None:
                cache.put(key, sk)
        def place(skel) -> bool:
            """Fill the skeleton with this row's contents (as written, then stripped); True when it is the render."""
            skeleton, where = skel
            for how, cs in (("sentinel", {i: contents[i] for i in locatable}),
                            ("sentinel-strip", {i: contents[i].strip() for i in locatable})):
                filled, at = _fill(skeleton, where, cs)
                if filled == text:
                    for i, (a, b) in at.items():
                        spans[i].content_start, spans[i].content_end, spans[i].method = a, b, how
                    return True
            return False

        if sk is not None:
            done = place(sk)
            if not done and key is not None:
                # the cached skeleton may belong to a content-dependent branch: try this row's own skeleton once
                own = _skeleton(template, messages, locatable, render_kw)
                if own is not None and own != sk:
                    done = place(own)

    # 2. prefix renders give turn boundaries (needed anyway for messages whose content was not located; assistant
    #    turns are placed by assistant_regions below when it runs)
    regions = eots is not None and (not plain or not _plain_rows_simple(template))
    need = [s for s in spans if s.content_start is None and not (regions and s.role == "assistant")
            and contents[s.index]]
    if need or not done:
        prev_end: int | None = _prefix_len(template, messages, 0, render_kw, text)
        for i, s in enumerate(spans):
            end = _prefix_len(template, messages, i + 1, render_kw, text)
            s.turn_start, s.turn_end = prev_end, end
            prev_end = end
        cursor = 0
        for i, s in enumerate(spans):
            if s.content_start is not None:
                cursor = max(cursor, s.content_end or 0)
                continue
            c = contents[i]
            lo = s.turn_start if s.turn_start is not None else cursor
            hi = s.turn_end if s.turn_end is not None else len(text)
            hit = None
            if c is not None:
                # the content as written, stripped, or as a JSON string (templates that ``tojson`` tool results)
                for how, needle in (("prefix", c), ("prefix", c.strip()), ("prefix", json.dumps(c, ensure_ascii=False))):
                    if not needle and c:
                        continue
                    p = text.find(needle, lo, hi) if needle else -1
                    if p >= 0:
                        hit = (p, p + len(needle), how if (s.turn_start is not None and s.turn_end is not None)
                               else "search")
                        break
                if hit is None and c == "" and s.turn_start is not None and s.turn_end is not None:
                    hit = None  # empty content: handled by the generation-prompt rule below
                if hit is None and c:  # last resort: anywhere after the previous content
                    p = text.find(c, cursor)
                    if p < 0 and c.strip():
                        p = text.find(c.strip(), cursor)
                        c = c.strip() if p >= 0 else c
                    if p >= 0:
                        hit = (p, p + len(c), "search")
            if hit is None and s.role == "assistant" and s.turn_start is not None:
                # content not recoverable (tool calls, rewritten reasoning, empty): what the model generates starts
                # where the generation prompt ends
                gp = _render_prefix(template, messages, i, render_kw, add_generation_prompt=True)
                if gp is not None and text.startswith(gp) and len(gp) >= s.turn_start:
                    start = len(gp)
                    end = start
                    if c:
                        q = text.find(c.strip() or c, start, hi)
                        if q == start:
                            end = start + len(c.strip() or c)
                    hit = (start, end, "turn")
            if hit is not None:
                s.content_start, s.content_end, s.method = hit
                cursor = hit[1]
    if regions:
        assistant_regions(template, messages, render_kw, text, eots, spans)
    return Located(text, spans)


_SIMPLE: "dict[int, tuple[Any, bool]]" = {}


def _plain_rows_simple(template) -> bool:
    """Whether, for rows of role and string content only, each assistant turn generates exactly its content and
    end-of-turn string: on probe conversations (with and without a system turn, two exchanges) every inference
    prompt is a prefix of the row, ends where the answer's content starts, and every turn renders alike as the last
    turn and inside the row. Then the content location is the generated part (today's fast paths); otherwise every
    row's assistant turns are located by :func:`assistant_regions`. Cached per template."""
    got = _SIMPLE.get(id(template))
    if got is not None and got[0] is template:
        return got[1]
    token = _PREFIXES.set(None)   # the probe conversations are not the row being located
    try:
        ok = _simple_probe(template)
    finally:
        _PREFIXES.reset(token)
    if len(_SIMPLE) > 64:
        _SIMPLE.clear()
    _SIMPLE[id(template)] = (template, ok)
    return ok


def _simple_probe(template) -> bool:
    ok = True
    for head in ([], [{"role": "system", "content": "S\u2063"}]):
        msgs = head + [{"role": "user", "content": "Q1\u2063"}, {"role": "assistant", "content": "A1\u2063"},
                       {"role": "user", "content": "Q2\u2063"}, {"role": "assistant", "content": "A2\u2063"}]
        full = _render_prefix(template, msgs, len(msgs), {})
        if full is None:
            continue   # the template refuses this shape: the other probe decides
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            prompt = _render_prefix(template, msgs, i, {}, add_generation_prompt=True)
            alone = _render_prefix(template, msgs, i + 1, {})
            if prompt is None or alone is None or not full.startswith(alone) or not alone.startswith(prompt) \
                    or not alone.startswith(m["content"], len(prompt)):
                ok = False
    return ok


# ---------------------------------------------------------------------------------- what each assistant generates
#: template arguments tried when the inference prompt is not a prefix of the training row (M022 names the one that
#: makes it one)
_PROMPT_SETTINGS = (("enable_thinking", True), ("enable_thinking", False), ("reasoning_effort", "low"),
                    ("reasoning_effort", "medium"), ("reasoning_effort", "high"), ("thinking", True),
                    ("thinking", False))


def _eot_in(text: str, lo: int, hi: int, eots: Sequence[str], *, last: bool) -> tuple[int, int] | None:
    """The first (or last) end-of-turn string in ``text[lo:hi]``."""
    best = None
    for e in eots:
        if not e:
            continue
        p = text.rfind(e, lo, hi) if last else text.find(e, lo, hi)
        if p >= 0 and (best is None or (p > best[0] if last else p < best[0])):
            best = (p, p + len(e))
    return best


def _common(a: str, b: str) -> int:
    """Length of the common prefix of two strings."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _aligned_start(prompt: str | None, text: str, spans: list[MessageSpan], i: int, s: MessageSpan) -> int | None:
    """Where assistant turn ``i`` starts in a row that its inference prompt ``prompt`` is not a prefix of: after the
    message located last before it, as far as the prompt's text after that message's text agrees with the row
    (never inside a ``<...>`` control token, never after the turn's own content). None when that message cannot be
    found in the prompt."""
    if prompt is None:
        return None
    prev = None
    for x in spans:
        if x.index < i and x.content_start is not None and x.content_end is not None and \
                x.content_end > x.content_start and (s.content_start is None or x.content_end <= s.content_start) \
                and (prev is None or x.content_end > prev.content_end):
            prev = x
    if prev is None:
        return None
    piece = text[prev.content_start:prev.content_end]
    k = prompt.rfind(piece)
    if k < 0:
        return None
    tail = prompt[k + len(piece):]
    n = _common(tail, text[prev.content_end:])
    j = tail.rfind("<", 0, n)
    if j >= 0 and ">" not in tail[j:n]:
        n = j
    start = prev.content_end + n
    if s.content_start is not None and start > s.content_start:
        return None
    return start


def assistant_regions(template, messages: Sequence[dict], render_kw: dict, text: str, eots: Sequence[str],
                      spans: list[MessageSpan]) -> None:
    """Set each assistant span to what that turn *generates*, located without searching for its content.

    The inference prompt before assistant message i is ``P = render(messages[:i], add_generation_prompt=True)``;
    the turn as the last message is ``F = render(messages[:i+1])``. When the row's text starts with ``F`` (and
    ``F`` with ``P``), the turn generates ``F[len(P):]``: its reasoning where the template keeps it, its content,
    its rendered tool calls, through the end-of-turn string (the last one in that part; what the template writes
    after it, such as ChatML's ``\\n``, is the next prompt's). When later turns rewrite this one (Qwen3 drops the
    reasoning of earlier turns) the row's text still starts with ``P`` but not with ``F``: the span runs from
    ``len(P)`` to the first end-of-turn string after it (before the next message), else as far as the row agrees with
    ``F``; ``alone`` records what the turn generates as the last turn. When ``P`` is not a prefix of the row, the
    template arguments in ``_PROMPT_SETTINGS`` are tried: ``prompt_setting`` names one that makes it a prefix (its
    prompt is then used) or is ``""``, and the span starts where ``P`` and the row part (never before the previous
    message). Either way the gate reports it (M022). The span's ``content_start``/``content_end`` become the
    generated part before the end-of-turn string, ``method`` ``"generated"``.
    """
    located = sorted((x.content_start, x.content_end or x.content_start) for x in spans
                     if x.content_start is not None)
    for s in spans:
        i = s.index
        if s.role != "assistant":
            continue
        kw = render_kw
        prompt = _render_prefix(template, messages, i, kw, add_generation_prompt=True)
        if prompt is None or not text.startswith(prompt):
            s.prompt_setting = ""
            for key, value in _PROMPT_SETTINGS:
                if key not in template.source or kw.get(key, None) == value:
                    continue
                alt = _render_prefix(template, messages, i, {**kw, key: value}, add_generation_prompt=True)
                if alt is not None and text.startswith(alt):
                    s.prompt_setting = f"{key}={json.dumps(value)}"
                    prompt, kw = alt, {**kw, key: value}
                    break
            else:
                # no argument helps (the template renders history otherwise than it prompts: K011): the turn
                # starts after the message before it, as far as the prompt's text after that message agrees with
                # the row (Mistral's tool list moving to the last user turn, GPT-OSS dropping earlier analysis)
                at = _aligned_start(prompt, text, spans, i, s)
                if at is None:
                    if s.content_start is not None:
                        continue   # the turn keeps its content's place
                    common = _common(prompt or "", text)
                    floor = max((x.content_end or x.content_start for x in spans if x.index < i and
                                 x.content_start is not None and (x.content_end or x.content_start) <= common),
                                default=0)
                    at = max(common, floor)
                prompt = text[:at]
        start = len(prompt)
        alone = _render_prefix(template, messages, i + 1, kw)
        if alone is not None and alone.startswith(prompt) and text.startswith(alone):
            eot = _eot_in(text, start, len(alone), eots, last=True)
            end = eot[0] if eot else len(alone)
        else:
            nxt = min((a for a, _b in located if a >= start and a not in (s.content_start,)), default=len(text))
            after = s.content_end if s.content_start is not None and s.content_start >= start and \
                s.content_end is not None else start
            eot = _eot_in(text, after, len(text), eots, last=False)
            if eot is not None and eot[0] <= max(nxt, after):
                end = eot[0]
            elif alone is not None and alone.startswith(text[:start]):
                end = start + _common(alone[start:], text[start:])   # as far as the row agrees with the turn
            else:
                end = after
            if alone is not None and alone.startswith(prompt):
                gen = alone[start:]
                e2 = _eot_in(gen, 0, len(gen), eots, last=True)
                mine = text[start:eot[1]] if eot is not None and eot[0] == end else text[start:end]
                if (gen[:e2[1]] if e2 else gen) != mine:
                    s.alone = gen[:e2[1]] if e2 else gen
        s.content_start, s.content_end, s.method = start, max(start, end), "generated"


class FilledLocated(Located):
    """What :func:`locate_messages` gives for a row that ``validator/opaque.py``'s ``FillRenderer`` rendered: the
    text is the shape's sentinel render (the same skeleton) with every content put in as written, at ``at``. The
    spans are made when first read (the gate's regular path reads ``at`` directly)."""

    def __init__(self, text: str, messages: Sequence[dict], at: dict[int, tuple[int, int]],
                 train_on: str | None = None):
        self.text, self.messages, self.at = text, messages, at
        self.train_on = train_on
        self._spans: list[MessageSpan] | None = None

    @property
    def spans(self) -> list[MessageSpan]:  # type: ignore[override]
        if self._spans is None:
            at = self.at
            trained = _trained(self.messages, self.train_on)
            self._spans = [MessageSpan(index=i, role=str(m.get("role")), content_start=at[i][0],
                                       content_end=at[i][1], trained=i in trained, method="sentinel")
                           for i, m in enumerate(self.messages)]
        return self._spans

    @spans.setter
    def spans(self, value: list[MessageSpan]) -> None:
        self._spans = value



def _prefix_len(template, messages, n, render_kw, text) -> int | None:
    if n == 0:
        p = _render_prefix(template, messages, 0, render_kw)
        return len(p) if p is not None and text.startswith(p) else 0
    p = _render_prefix(template, messages, n, render_kw)
    return len(p) if p is not None and text.startswith(p) else None
