"""One conversation → the exact ids a trainer feeds, their labels, and where every message landed.

``encode_conversation`` renders the conversation once with the template, locates every message in the render
(``validator/locate.py``: each content's place, and what each assistant turn generates), tokenizes the full text
once (with offsets) and labels it: the tokens of what each assistant turn generates through its end-of-turn token
(``template.meta.end_of_turn``, else the tokenizer's eos, plus the tokenizer's stop tokens the template writes),
-100 elsewhere. Tokens that cross a content boundary are recorded on the span (``straddle_start``/``straddle_end``),
never hidden. The render is encoded as ``apply_chat_template(tokenize=True)`` encodes it: no special tokens added.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Protocol, Sequence

from tmplcheck.validator.checks.tokens import TokenIndex
from tmplcheck.validator.locate import Located, MessageSpan, locate_messages
from tmplcheck.validator.tokenizer import Encoding, Tokenizer

IGNORE_INDEX = -100

__all__ = ["IGNORE_INDEX", "MessageSpan", "EncodedConversation", "encode_conversation", "encode_conversations",
           "locate_messages", "Located", "TemplateLike", "add_special_tokens_for", "resolve_add_special_tokens"]


class TemplateLike(Protocol):  # tmplcheck.templates.Template
    meta: Any
    source: str

    def render(self, messages: list[dict], *, add_generation_prompt: bool = False, tools=None, **extra) -> str: ...


@dataclass
class EncodedConversation:
    text: str                          # the full render (add_generation_prompt=False)
    ids: list[int]                     # what the trainer feeds (after max_length truncation)
    offsets: list[tuple[int, int]]     # char offsets into ``text`` per id ((0, 0) for post-processor tokens)
    labels: list[int]                  # ids where trained, IGNORE_INDEX elsewhere
    spans: list[MessageSpan]
    tokens: Sequence[str] = field(default_factory=list)   # token strings (made on first use)
    special_mask: list[int] = field(default_factory=list)   # 1 for tokens the post-processor added (BOS/EOS)
    add_special_tokens: bool = True    # whether the tokenizer's post-processor ran
    adds_bos: bool = False             # the tokenizer's post-processor adds BOS
    template_bos: bool = False         # the rendered text itself starts with the BOS string
    bos_id: int | None = None
    bos_count: int = 0                 # BOS ids at the start of ``ids`` (2 = double BOS)
    bos_total: int = 0                 # BOS ids anywhere in ``ids``
    full_length: int = 0               # number of ids before truncation
    max_length: int | None = None
    truncated: bool = False
    generation_spans: list[tuple[int, int]] | None = None   # {% generation %} char spans, when the template has them
    generation_labels: list[int] | None = None              # labels those spans imply (cross-check)

    @property
    def n_trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)

    @property
    def trained_mask(self) -> list[bool]:
        return [x != IGNORE_INDEX for x in self.labels]

    def span_of(self, index: int) -> MessageSpan | None:
        for s in self.spans:
            if s.index == index:
                return s
        return None


# ---------------------------------------------------------------------------------------------------- encoding
def add_special_tokens_for(template, tokenizer) -> bool:
    """The one BOS policy (trainer, gate, probe): exactly what ``apply_chat_template(tokenize=True)`` does —
    transformers 5 encodes the render with ``add_special_tokens=False``, so the tokenizer's post-processor never
    runs and a row starts with BOS exactly when the template writes it. (Until this release the post-processor ran
    when the template wrote no BOS, giving a Phi-3 row a ``<s>`` that apply_chat_template and TRL do not give.) Where
    the tokenizer's post-processor would add a BOS the template does not write — what llama.cpp and
    ``tokenizer(prompt)`` do at serving — the gate says so (K020)."""
    return False


def resolve_add_special_tokens(template, tokenizer, add_special_tokens: bool | str) -> bool:
    """``"auto"`` → :func:`add_special_tokens_for`; ``True``/``False`` as given (to check another pipeline, e.g. a
    trainer that encodes the render with ``tokenizer(text)``)."""
    if add_special_tokens == "auto":
        return add_special_tokens_for(template, tokenizer)
    return bool(add_special_tokens)


def end_of_turn_strings(template, tokenizer: Tokenizer) -> tuple[str, ...]:
    """The strings that close an assistant turn: the template's own (``meta.end_of_turn``, else the tokenizer's
    eos), plus every stop token of the tokenizer (generation config) that the template writes literally — Llama
    3.1 ends a tool call with ``<|eom_id|>``."""
    meta = getattr(template, "meta", None)
    eot = tuple(getattr(meta, "end_of_turn", ()) or ())
    if not eot and tokenizer.eos_token:
        eot = (tokenizer.eos_token,)
    source = getattr(template, "source", "") or ""
    more = []
    for i in sorted(getattr(tokenizer, "stop_ids", ()) or ()):
        t = tokenizer.id_to_token(i)
        if t and t not in eot and len(t) > 2 and t in source:
            more.append(t)
    return eot + tuple(more)


def _find_eot(text: str, start: int, limit: int, eots: Sequence[str]) -> tuple[int, int, str] | None:
    best = None
    for e in eots:
        if not e:
            continue
        p = text.find(e, start, limit)
        if p >= 0 and (best is None or p < best[0]):
            best = (p, p + len(e), e)
    return best


class _Tokens(Sequence[str]):
    """The token strings of an encoding, made on first use: building ~500 Python strings a row costs more than the
    row's checks, and only callers that look at token strings (tests, debugging) need them. Pickles as a list."""

    __slots__ = ("_enc", "_n", "_list")

    def __init__(self, enc: Any, n: int):
        self._enc, self._n, self._list = enc, n, None

    def _get(self) -> list[str]:
        if self._list is None:
            self._list = list(self._enc.tokens[: self._n])
            self._enc = None
        return self._list

    def __getitem__(self, i):  # type: ignore[override]
        return self._get()[i]

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __eq__(self, other: object) -> bool:
        return self._get() == (other._get() if isinstance(other, _Tokens) else other)

    def __repr__(self) -> str:
        return repr(self._get())

    def __reduce__(self):
        return list, (self._get(),)


def finish_encoding(loc: Located, enc: Encoding, template, tokenizer: Tokenizer, *, add_special_tokens: bool,
                    max_length: int | None = None, eots: Sequence[str] | None = None,
                    eot_ids: dict[str, int | None] | None = None,
                    generation_spans: list[tuple[int, int]] | None = None) -> EncodedConversation:
    """One located render and its tokenizer ``Encoding`` → the labelled :class:`EncodedConversation`."""
    if eots is None:
        eots = end_of_turn_strings(template, tokenizer)
    if eot_ids is None:
        eot_ids = {e: tokenizer.single_id(e) for e in eots}
    text = loc.text
    ids = enc.ids
    offsets = enc.offsets
    if offsets and type(offsets[0]) is not tuple:
        offsets = [tuple(o) for o in offsets]
    special_mask = enc.special_tokens_mask
    ti = TokenIndex(offsets, special_mask)
    labels = [IGNORE_INDEX] * len(ids)
    spans = loc.spans
    starts_sorted = sorted((s.content_start, s.index) for s in spans if s.content_start is not None)
    for s in spans:
        if s.content_start is None:
            continue
        a, b = s.content_start, s.content_end
        rng = ti.overlapping(a, b) if b > a else None
        if rng:
            s.token_start, s.token_end = rng
            if offsets[rng[0]][0] < a:
                s.straddle_start = rng[0]
            if offsets[rng[1] - 1][1] > b:
                s.straddle_end = rng[1] - 1
        else:
            k = bisect.bisect_left(ti.starts, a)
            j = ti.real[k] if k < len(ti.real) else len(ids)
            s.token_start = s.token_end = j
        if s.role != "assistant":
            continue
        # end of turn: the first end-of-turn string after the content, before the next message's content
        nxt = [p for p, i in starts_sorted if p >= b and i != s.index]
        limit = min(nxt) if nxt else len(text)
        if s.turn_end is not None:
            limit = min(limit, s.turn_end) if s.turn_end > b else limit
        hit = _find_eot(text, b, limit, eots)
        train_end = b
        if hit is not None:
            p, q, e = hit
            s.eot_char, s.eot_string = (p, q), e
            s.eot_id = eot_ids.get(e)
            rng = ti.overlapping(p, q)
            if rng:
                s.eot_index = rng[1] - 1
                # one token, starting at the string (its end may include whitespace an rstrip token eats)
                s.eot_single = (rng[1] - rng[0] == 1 and offsets[rng[0]][0] == p and offsets[rng[0]][1] >= q
                                and s.eot_id is not None and ids[rng[0]] == s.eot_id)
            train_end = q
        if s.trained:
            ti.copy_labels(labels, ids, bisect.bisect_left(ti.starts, a), bisect.bisect_left(ti.starts, train_end))
    gen_labels = None
    if generation_spans is not None:
        gen_labels = [IGNORE_INDEX] * len(ids)
        for a, b in generation_spans:
            ti.copy_labels(gen_labels, ids, bisect.bisect_left(ti.starts, a), bisect.bisect_left(ti.starts, b))
    bos_id = tokenizer.bos_id
    bos_count = 0
    if bos_id is not None:
        while bos_count < len(ids) and ids[bos_count] == bos_id:
            bos_count += 1
    bos_total = ids.count(bos_id) if bos_id is not None else 0
    full = len(ids)
    truncated = max_length is not None and full > max_length
    if truncated:
        for s in spans:
            s.truncated = ((s.token_end is not None and s.token_end > max_length)
                           or (s.eot_index is not None and s.eot_index >= max_length))
        ids, offsets, labels = ids[:max_length], offsets[:max_length], labels[:max_length]
        special_mask = special_mask[:max_length]
        if gen_labels is not None:
            gen_labels = gen_labels[:max_length]
    return EncodedConversation(
        text=text, ids=ids, offsets=offsets, labels=labels, spans=spans, tokens=_Tokens(enc, len(ids)),
        special_mask=special_mask,
        add_special_tokens=add_special_tokens, adds_bos=tokenizer.adds_bos and add_special_tokens,
        template_bos=bool(tokenizer.bos_token) and text.startswith(tokenizer.bos_token), bos_id=bos_id,
        bos_count=bos_count, bos_total=bos_total, full_length=full, max_length=max_length, truncated=truncated,
        generation_spans=generation_spans, generation_labels=gen_labels)


def generation_spans(template, messages, render_kw) -> list[tuple[int, int]] | None:
    meta = getattr(template, "meta", None)
    if not getattr(meta, "has_generation_markers", False) or not hasattr(template, "render_with_mask"):
        return None
    try:
        _text, spans = template.render_with_mask(messages, **render_kw)
    except Exception:
        return None
    return [tuple(x) for x in spans]


def encode_conversations(template, tokenizer: Tokenizer, conversations: Iterable[Sequence[dict]], *,
                         max_length: int | None = None, add_special_tokens: bool | str = "auto",
                         errors: str = "raise", render_kw: dict | None = None,
                         train_on: str | None = None) -> list[Any]:
    """``encode_conversation`` for many rows with one ``encode_batch`` call.

    ``errors="raise"`` re-raises the first render error; ``errors="return"`` puts the exception object in that
    row's place so that one bad row does not stop the batch. ``add_special_tokens``: see
    :func:`resolve_add_special_tokens`.
    """
    render_kw = dict(render_kw or {})
    add_special_tokens = resolve_add_special_tokens(template, tokenizer, add_special_tokens)
    eots = end_of_turn_strings(template, tokenizer)
    eot_ids = {e: tokenizer.single_id(e) for e in eots}
    located: list[Any] = []
    gens: list[Any] = []
    for msgs in conversations:
        msgs = [dict(m) for m in msgs]
        try:
            loc = locate_messages(template, msgs, render_kw=render_kw, eots=eots, train_on=train_on)
            located.append(loc)
            gens.append(generation_spans(template, msgs, render_kw))
        except Exception as e:  # a TemplateRenderError is data: the caller turns it into a finding
            if errors == "raise":
                raise
            located.append(e)
            gens.append(None)
    texts = [x.text for x in located if isinstance(x, Located)]
    encs = iter(tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)) if texts else iter(())
    out: list[Any] = []
    for loc, gen in zip(located, gens):
        if not isinstance(loc, Located):
            out.append(loc)
            continue
        out.append(finish_encoding(loc, next(encs), template, tokenizer, add_special_tokens=add_special_tokens,
                           max_length=max_length, eots=eots, eot_ids=eot_ids, generation_spans=gen))
    return out


def encode_conversation(template, tokenizer: Tokenizer, messages: Sequence[dict], *,
                        max_length: int | None = None, add_special_tokens: bool | str = "auto",
                        render_kw: dict | None = None, train_on: str | None = None) -> EncodedConversation:
    """Render, tokenize once, and label one conversation (see the module docstring).

    ``add_special_tokens="auto"`` (default) is the trainer's policy (:func:`add_special_tokens_for`): the tokenizer's
    post-processor runs on the render unless the template writes BOS itself and the tokenizer adds it too.
    ``True`` runs it regardless, as ``tokenizer(text)`` does (with such a pair ``bos_count`` is then 2); ``False``
    never.
    ``train_on``: which assistant turns get labels when a message has no ``weight``/``train`` flag of its own
    (``validator/training_flags.py``; None: every assistant turn). Render errors (``TemplateRenderError``)
    propagate.
    """
    return encode_conversations(template, tokenizer, [messages], max_length=max_length,
                                add_special_tokens=add_special_tokens, render_kw=render_kw, train_on=train_on)[0]
