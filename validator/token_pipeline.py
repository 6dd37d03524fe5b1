"""The token pipeline: encode rows with the real tokenizer and run the K and M checks (the gate's token stage,
``validator/token_stage.py``, runs it over chunks; ``show`` and ``probe`` on single rows).

Per row the pipeline (``TokenPipeline.process``: ``prepare``, ``tokenize``, ``finish``) locates each message's content
in the render from the template's structure (the template rendered once per conversation shape with sentinel
contents gives the template text between messages), gets the row's ids and their character spans
(``Tokenizer.encode_batch_spans``) and checks the row. A *regular* row (``checks.tokens.regular_row``: contents found
verbatim, content edges on token boundaries, each answer followed by exactly its end-of-turn id) is checked over
those arrays; any other row gets the trainer's own encoding (``tokens.finish_encoding``: ids, offsets, labels) and the
full pure checks of ``validator/checks/tokens.py`` — both give the same findings (``tests/test_regular_rows.py``). The
pipeline is plain data in, findings and statistics out, so the same code runs in the gate's process (serial) or in
worker processes over chunks of rows (``validator/parallel.py``), with identical results.

Prefix stability (K011) is checked per row without tokenizing the prompts: the inference prompt's text must be a
prefix of the row's text, and the row's encoding must have a token boundary where the prompt ends (no token may span
it). With BPE and a pre-tokenizer that splits the prompt the same way, that is the token-prefix property; where the
cheap test fails the prompt is encoded to name the first divergent token. ``tmplcheck probe`` tests it exactly.

The llama.cpp tokenizer comparison (K010) costs as much as the HF tokenization itself, and rendering every inference
prompt costs a render per user turn, so on large files both run on a deterministic sample picked by the row's record
ordinal in the file (blank and unreadable lines count, so a worker knows it without the rows before): every record
before ``llamacpp_all``/``prefix_all`` (256), then one in ``llamacpp_every``/``prefix_every`` (50); a separate
``{% generation %}`` training variant is rendered on the same kind of sample. The summary says how many rows each
covered (``llamacpp_rows_compared``, ``prefix_rows_rendered``, ``regular_rows``) and the sampling (``sampling``,
``generation_markers``). On the other rows K009 is still checked at the generation point the template's structure
gives (the answer's content start minus the gap a probe conversation measured once). K010 itself runs in the gate's
process (``TokenStage.take``), so that only that process loads the llama.cpp vocabulary.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from tmplcheck.validator.checks import masks as M
from tmplcheck.validator.checks import tokens as K
from tmplcheck.validator.checks.tokens import TokenContext, TokenIndex, Turn
from tmplcheck.validator.findings import Finding, Severity, finding
from tmplcheck.validator.ingest import REASONING_KEYS
from tmplcheck.validator.locate import FilledLocated, _plain_rows_simple

#: one row as the pipeline sees it: (line, [(role, content text, content pointer, role pointer, other fields), ...],
#: template arguments or None) — an ingested message (``ingest.Message``) and the row's ``render_kw``, picklable
RowIn = tuple[int, list[tuple[str, str, str, str, tuple]], dict | None]
_SENTINEL = "\u2063TMPLCHECK{}\u2063"
_EMPTY_THINK = re.compile(r"<(think|thinking|reasoning)>\s*</\1>")


def _show(s: str, n: int = 60) -> str:
    return repr(s if len(s) <= n else s[: n // 2] + "…" + s[-n // 2:])


@dataclass
class RowOut:
    """What the pipeline returns per row (picklable; the parallel path ships these back)."""

    line: int
    findings: list[Finding]
    tokens: int = -1          # -1: the row could not be rendered/encoded (the template stage reports why)
    trained: int = 0
    sampled: int = 0          # bit 1: on the llama.cpp comparison's sample; bit 2: on the prompt renders' sample
    regular: bool = False     # checked as a regular row (``checks.tokens.regular_row``)
    llamacpp_input: tuple | None = None   # (text, ids, offsets) of a row on the llama.cpp sample, until compared


# -------------------------------------------------------------------------------------------- locating the turns
def locate_turns(template, messages: Sequence[dict], text: str, pointers: Sequence[tuple[str, str]] = ()) \
        -> tuple[list[Turn], list[int]]:
    """Where each message's content sits in ``text`` (the render of ``messages``), from the template's structure.

    The template is rendered once more with unique sentinel contents; the text between sentinels is the template's
    own text (headers, end-of-turn strings), and the sentinels' order is the order the template writes the messages
    in (a Mistral template writes the system prompt inside the last user turn). Walking ``text`` piece by piece gives
    exact content spans even when a content equals a role name. Returns the turns sorted by position (turns that
    could not be found last, with ``start == -1``) and the indices of messages whose content the template trimmed.
    """
    n = len(messages)
    sent = [dict(m, content=_SENTINEL.format(i)) for i, m in enumerate(messages)]
    try:
        stext = template.render(sent)
    except Exception:  # noqa: BLE001 - a template that branches on content; fall back to searching
        stext = None
    where: list[tuple[int, int]] = []
    if stext is not None:
        for i in range(n):
            k = stext.find(_SENTINEL.format(i))
            if k >= 0:
                where.append((k, i))
        where.sort()
    else:
        where = [(0, i) for i in range(n)]
    turns: list[Turn] = []
    trimmed: list[int] = []
    pos = 0
    prev_end = 0
    placed = set()
    for k, i in where:
        m = messages[i]
        c = m.get("content") or ""
        ptr, rptr = pointers[i] if i < len(pointers) else ("", "")
        piece = stext[prev_end:k] if stext is not None else None
        if stext is not None:
            prev_end = k + len(_SENTINEL.format(i))
        at = pos + len(piece) if piece is not None and text.startswith(piece, pos) else -1
        start = end = -1
        if at >= 0 and text.startswith(c, at):
            start, end = at, at + len(c)
        elif at >= 0 and c.strip() != c and text.startswith(c.strip(), at):
            start, end = at, at + len(c.strip())
            trimmed.append(i)
        else:
            f = text.find(c, pos) if c else -1
            if f >= 0:
                start, end = f, f + len(c)
            elif c.strip():
                f = text.find(c.strip(), pos)
                if f >= 0:
                    start, end = f, f + len(c.strip())
                    trimmed.append(i)
        if start < 0:
            continue
        turns.append(Turn(i, m.get("role", ""), start, end, ptr, rptr))
        placed.add(i)
        pos = end
    for i in range(n):
        if i not in placed:
            ptr, rptr = pointers[i] if i < len(pointers) else ("", "")
            turns.append(Turn(i, messages[i].get("role", ""), -1, -1, ptr, rptr))
    return turns, trimmed


# ---------------------------------------------------------------------------------------------------- the pipeline
@dataclass
class _Prepared:
    """Rows between :meth:`TokenPipeline.prepare` and :meth:`TokenPipeline.finish`."""

    rows: list
    ordinals: list[int]
    msgs: list[list[dict]]
    located: list[Any]


def _special_strings_of(tok) -> dict[str, int]:
    """Control strings of the tokenizer (added tokens marked special) → id."""
    inner = getattr(tok, "backend", None)
    out: dict[str, int] = {}
    if inner is not None and hasattr(inner, "get_added_tokens_decoder"):
        for i, at in inner.get_added_tokens_decoder().items():
            if getattr(at, "special", True) and at.content:
                out[at.content] = i
    for s in (getattr(tok, "bos_token", None), getattr(tok, "eos_token", None)):
        if s and s not in out:
            i = tok.token_to_id(s)
            if i is not None:
                out[s] = i
    return out


def template_control_strings(template) -> list[str]:
    """The control strings the template writes that must be single tokens: its end-of-turn strings, its BOS, and
    every ``<...>``-shaped special string (``[INST]``-style markers are plain text in some vocabularies, e.g.
    Llama 2, and control tokens in others, so they are not required to be one id)."""
    meta = template.meta
    out = [s for s in meta.special_tokens if s.startswith("<") and s.endswith(">")] + list(meta.end_of_turn)
    if meta.bos_in_template and meta.bos_token:
        out.append(meta.bos_token)
    return list(dict.fromkeys(s for s in out if s))


class TokenPipeline:
    """Template + tokenizer + settings → findings per row. Built once per process."""

    def __init__(self, template, tokenizer, *, path: str = "", max_length: int | None = None,
                 llamacpp_vocab: str | None = None, llamacpp_all: int = 256, llamacpp_every: int = 50,
                 check_generation: bool = True, add_special_tokens: bool | str = "auto",
                 prefix_all: int = 256, prefix_every: int = 50, generation_all: int = 256,
                 generation_every: int = 50, regular: bool = True, fill: bool = True,
                 render_defaults: dict | None = None, train_on: str | None = None):
        from tmplcheck.validator.tokens import end_of_turn_strings, resolve_add_special_tokens
        from tmplcheck.validator.training_flags import valid_train_on

        #: which assistant turns are trained when a message has no flag of its own (``--train-on``)
        self.train_on = valid_train_on(train_on)
        self.template = template
        self.tokenizer = tokenizer
        self.path = path
        self.render_defaults = dict(render_defaults or {})   # --tools, --documents, --template-kwargs
        # the trainer's policy: the post-processor runs unless the template writes BOS and the tokenizer adds it too
        # (``True``/``False`` check another pipeline, e.g. a trainer that encodes the render with tokenizer(text))
        self.add_special_tokens = resolve_add_special_tokens(template, tokenizer, add_special_tokens)
        specials = {s: i for i in getattr(tokenizer, "special_ids", ()) if (s := tokenizer.id_to_token(i))}
        specials.update({k: v for k, v in _special_strings_of(tokenizer).items() if k not in specials})
        meta = template.meta
        enc1 = self.encode_plain
        eot_ids = set()
        for s in meta.end_of_turn:
            ids = enc1(s)
            if len(ids) == 1:
                eot_ids.add(ids[0])
        stop = set(getattr(tokenizer, "stop_ids", ()) or ())
        if getattr(tokenizer, "eos_id", None) is not None:
            stop.add(tokenizer.eos_id)
        heads = set()
        for h in list(meta.role_headers.values()) + [meta.generation_prompt]:
            hid = enc1(h)[:1] if h else []
            if hid and hid[0] in specials.values():
                heads.add(hid[0])
        bos_id = getattr(tokenizer, "bos_id", None)
        cfg = getattr(tokenizer, "config", None) or {}
        # BOS is expected when the tokenizer adds it, its config says so, or the template writes it
        bos_expected = bos_id is not None and bool(getattr(tokenizer, "adds_bos", False) or meta.bos_in_template
                                                   or cfg.get("add_bos_token") is True)
        self.ctx = TokenContext(
            path=path, bos_id=bos_id, bos_token=getattr(tokenizer, "bos_token", None), bos_expected=bos_expected,
            bos_serving_only=bool(bos_id is not None and not self.add_special_tokens and not meta.bos_in_template
                                  and getattr(tokenizer, "adds_bos", False)),
            eot_ids=frozenset(eot_ids), stop_ids=frozenset(stop), special_ids=frozenset(specials.values()),
            special_strings=tuple(specials), max_length=max_length, header_ids=frozenset(heads),
            id_to_token={i: s for s, i in specials.items()})
        self.has_markers = bool(check_generation and getattr(meta, "has_generation_markers", False)
                                and hasattr(template, "render_with_mask"))
        self.markers_inline = self.has_markers and getattr(template, "training_source", None) == template.source
        self.generation_all, self.generation_every = generation_all, max(1, generation_every)
        self.regular = regular   # False: every row gets the full checks (the tests compare both ways)
        from tmplcheck.validator.opaque import FillRenderer

        # rows of a content-opaque template are filled into their shape's render (the template stage's renders are
        # used instead when it shares them); ``fill=False`` renders every row (the tests compare both ways)
        self.filler = FillRenderer(template) if fill else None
        # (end-of-turn string, its id when it is one token), as the labels are made (tokens.finish_encoding)
        self.eot_strings = tuple((e, tokenizer.single_id(e)) for e in end_of_turn_strings(template, tokenizer) if e)
        self.llamacpp_vocab = llamacpp_vocab
        self.llamacpp_all = llamacpp_all
        self.llamacpp_every = max(1, llamacpp_every)
        self._lc = None
        self.rows_seen = 0
        self.prefix_all, self.prefix_every = prefix_all, max(1, prefix_every)
        self.gap = self._generation_gap()
        # a pair whose control strings are not single tokens (K001) has no turn structure at the token level:
        # the structural checks would only repeat that finding on every row, so they are skipped
        self.structure_ok = not self.template_findings()

    # -- helpers
    def render_kw(self, row: RowIn) -> dict:
        """The template arguments of a row: the gate's defaults (``--tools`` ...), overridden by the row's own."""
        kw = row[2] if len(row) > 2 else None
        if not self.render_defaults:
            return dict(kw) if kw else {}
        return {**self.render_defaults, **(kw or {})}

    def encode_plain(self, s: str) -> list[int]:
        return list(self.tokenizer.encode(s, add_special_tokens=False).ids)

    def template_findings(self) -> list[Finding]:
        name = self.template.meta.name
        return list(K.check_special_tokens(template_control_strings(self.template), self.encode_plain,
                                           path=self.path, template=name))

    def _llamacpp(self):
        if self._lc is None and self.llamacpp_vocab:
            from tmplcheck.validator.tokenizer import llama_cpp_tokenizer

            self._lc = llama_cpp_tokenizer(self.llamacpp_vocab)
        return self._lc

    def _generation_gap(self) -> int | None:
        """Characters between the end of the inference prompt and the answer's content in a training row, from a
        probe conversation (0 for most templates; Llama 2's " " after [/INST] is 1). None when the prompt is not a
        text prefix of the row at all (then every row's prompts are rendered)."""
        try:
            a = [{"role": "user", "content": "Q\u2063"}]
            prompt = self.template.render(a, add_generation_prompt=True)
            full = self.template.render(a + [{"role": "assistant", "content": "\u2063A\u2063"}])
        except Exception:  # noqa: BLE001
            return None
        k = full.find("\u2063A\u2063")
        return k - len(prompt) if full.startswith(prompt) and k >= len(prompt) else None

    def _prefix_sampled(self, ordinal: int) -> bool:
        return self.gap is None or ordinal < self.prefix_all or ordinal % self.prefix_every == 0

    def _lc_sampled(self, ordinal: int) -> bool:
        return bool(self.llamacpp_vocab) and (ordinal < self.llamacpp_all or ordinal % self.llamacpp_every == 0)

    # -- per row
    def sampled(self, ordinal: int) -> int:
        return (1 if self._lc_sampled(ordinal) else 0) | (2 if self._prefix_sampled(ordinal) else 0)

    def process(self, rows: Sequence[RowIn], first_ordinal: int | Sequence[int] = 0,
                texts: Sequence[str | BaseException | None] | None = None) -> list[RowOut]:
        """Encode the rows in one batch and check each.

        ``first_ordinal``: the first row's ordinal (the rest follow it), or each row's ordinal; the sampled checks
        pick rows by ordinal. ``texts``: the rows' renders when the caller already made them with the same template
        (else ``None``).

        Each row is first tried as a *regular* row (``checks.tokens.regular_row``: content edges on token
        boundaries, each answer followed by exactly its end-of-turn token), which needs only the ids and their
        spans as arrays; any other row, and every row on a sample, gets the full checks over a full encoding."""
        ordinals = (range(first_ordinal, first_ordinal + len(rows)) if isinstance(first_ordinal, int)
                    else first_ordinal)
        prep = self.prepare(rows, ordinals, texts)
        return self.finish(prep, self.tokenize(prep))

    def prepare(self, rows: Sequence[RowIn], ordinals: Sequence[int],
                texts: Sequence[str | BaseException | None] | None = None,
                places: Sequence[dict | None] | None = None) -> "_Prepared":
        """Locate every message of the rows in their renders (the Python half before tokenization). ``places``:
        where each content is in ``texts[k]`` when the template stage filled the row's shape render
        (``validator/opaque.py``); rows without a text are filled here when the template allows it, else rendered."""
        from tmplcheck.validator.locate import locate_messages

        msgs = [[({"role": r, "content": c, **dict(f)} if f else {"role": r, "content": c})
                 for r, c, _p, _rp, f in row[1]] for row in rows]
        eots = [e for e, _ in self.eot_strings]
        # a template whose plain rows are not simple (an answer generates more than its content: Qwen3's empty
        # reasoning block) has every row's assistant turns located by what they generate, not by the fill's places
        simple = _plain_rows_simple(self.template)
        located: list[Any] = []
        for k, m in enumerate(msgs):
            known = texts[k] if texts is not None else None
            at = places[k] if places is not None else None
            kw = self.render_kw(rows[k])
            if not simple:
                at = None
            try:
                if isinstance(known, BaseException):
                    raise known
                if known is None and self.filler is not None and simple and not kw and is_plain_row(rows[k]):
                    got = self.filler.fill(m)
                    if got is not None:
                        known, at = got[0].text, got[1]
                loc = FilledLocated(known, m, at, self.train_on) if at is not None else \
                    locate_messages(self.template, m, text=known, render_kw=kw, eots=eots, train_on=self.train_on)
                if not loc.text.isascii():
                    loc.text.encode("utf-8")   # a lone surrogate (D027) cannot be tokenized: the row is not encoded
                located.append(loc)
            except Exception as e:  # noqa: BLE001 - the template and dataset stages report why (T codes, D027)
                located.append(e)
        return _Prepared(list(rows), list(ordinals), msgs, located)

    def tokenize(self, prep: "_Prepared") -> list:
        """The rows' ids and spans (the Rust tokenizer; safe to run in another thread: it touches no Python state
        of the pipeline)."""
        from tmplcheck.validator.tokens import Located

        good = [loc.text for loc in prep.located if isinstance(loc, Located)]
        return self.tokenizer.encode_batch_spans(good, add_special_tokens=self.add_special_tokens)

    def finish(self, prep: "_Prepared", token_spans: list) -> list[RowOut]:
        """The checks of each row, given its ids and spans (the Python half after tokenization)."""
        from tmplcheck.validator.tokens import Located

        regular = self._regular_batch(prep, token_spans)
        spans = iter(token_spans)
        out = []
        for j, (row, messages, loc, ordinal) in enumerate(zip(prep.rows, prep.msgs, prep.located, prep.ordinals)):
            if not isinstance(loc, Located):
                out.append(RowOut(row[0], [], -1, 0, self.sampled(ordinal)))
                continue
            sp = next(spans)
            r = regular.get(j)
            if r is not None:
                out.append(r)
                continue
            gen = self._generation(messages, ordinal, self.render_kw(row))
            r = self._fast(row, messages, loc, sp, ordinal, gen) \
                if is_plain_row(row) and not self.render_defaults else None
            if r is None:
                r = self._check(row, messages, self._full_encoding(loc, sp, messages, gen, self.render_kw(row)),
                                ordinal)
            r.sampled = self.sampled(ordinal)
            out.append(r)
        return out

    def _regular_batch(self, prep: "_Prepared", token_spans) -> dict[int, RowOut]:
        """:meth:`_fast` for every filled plain row of a batch at once, when the tokenizer gave the batch's spans as
        one concatenated text (``tokenizer.FlatSpans``): the content edges and generation points of all rows are
        looked up in one ``searchsorted``, and each row's remaining test (the end-of-turn id after each answer) reads
        the results. The same conditions as :func:`checks.tokens.regular_row` (``tests/test_regular_rows.py``);
        rows it does not take (not filled, non-ASCII, sampled, markers...) go through :meth:`_fast` one by one.
        Returns the regular rows' results by their place in the batch."""
        from tmplcheck.validator.tokens import Located

        flat = getattr(token_spans, "flat", None)
        ctx = self.ctx
        gap = self.gap
        if flat is None or not self.regular or not self.structure_ok or self.render_defaults or gap is None or \
                (self.has_markers and self.markers_inline):
            return {}
        markers = self.has_markers   # a separate training variant: its spans are compared on its sample's rows
        import numpy as np

        rx = ctx.special_re
        maxlen = ctx.max_length
        first, base, exact = flat.first, flat.base, flat.exact
        cand: list[tuple[int, int, list[tuple[int, int]], int]] = []   # (place in batch, in spans, answers, points)
        pts: list[int] = []      # per candidate: its answers' starts, their ends, then its generation points
        s = -1
        for j, (row, messages, loc, ordinal) in enumerate(zip(prep.rows, prep.msgs, prep.located, prep.ordinals)):
            if not isinstance(loc, Located):
                continue
            s += 1
            if type(loc) is not FilledLocated or not exact[s] or self._lc_sampled(ordinal) or \
                    self._prefix_sampled(ordinal) or not is_plain_row(row) or \
                    (markers and self._generation_sampled(ordinal)):
                continue
            n = first[s + 1] - first[s]
            if n == 0 or (maxlen and n > maxlen):
                continue
            if rx is not None and _any_match(rx, row[1]):
                continue   # K006 and whatever the control token does to the structure: the full checks say it
            at = loc.at
            b0 = base[s]
            answers = []
            points = []
            for i, m in enumerate(messages):
                if m["role"] == "assistant":
                    a, e = at[i]
                    answers.append((a, e))
                    if i > 0 and messages[i - 1]["role"] == "user":
                        points.append(b0 + a - gap)
            if not answers or (len(answers) > 1 and self.train_on != "all-assistant"):
                continue   # (an assistant turn not trained: the full checks compare the mask turn by turn)
            pts.extend([b0 + a for a, _ in answers])
            pts.extend([b0 + e for _, e in answers])
            pts.extend(points)
            cand.append((j, s, answers, len(points)))
        if not cand:
            return {}
        P = np.fromiter(pts, dtype=np.int64, count=len(pts))
        st, en = flat.starts, flat.ends
        ks = np.searchsorted(st, P, "left")           # first token starting at or after each point
        before = en[np.maximum(ks - 1, 0)]
        kc = np.minimum(ks, len(st) - 1)
        spans_here = (before > P).tolist()           # (with the token past the row's first token: checked below)
        kl = ks.tolist()
        start_at = st[kc].tolist()
        end_at = en[kc].tolist()
        eots = self.eot_strings
        out: dict[int, RowOut] = {}
        at_p = 0
        for j, s, answers, n_points in cand:
            m = len(answers)
            lo, hi = first[s], first[s + 1]
            b0 = base[s]
            row_pts = range(at_p, at_p + 2 * m + n_points)
            at_p += 2 * m + n_points
            if any(kl[q] > lo and spans_here[q] for q in row_pts):
                continue                              # a token spans a content edge or a generation point
            ids = token_spans[s].ids
            text = prep.located[j].text
            trained = 0
            ok = True
            for x, (a_c, e_c) in enumerate(answers):
                qa, qe = row_pts[x], row_pts[m + x]
                a, b = kl[qa], kl[qe]
                if b >= hi or a >= b or start_at[qe] != b0 + e_c:
                    ok = False
                    break
                tok = ids[b - lo]
                hit = None
                for es, sid in eots:
                    if sid == tok and text.startswith(es, e_c) and end_at[qe] == b0 + e_c + len(es):
                        hit = es
                        break
                if hit is None or not K.is_end_of_turn(tok, ctx) or (ctx.stop_ids and tok not in ctx.stop_ids):
                    ok = False
                    break
                trained += b - a + 1
            if ok:
                line = prep.rows[j][0]
                out[j] = RowOut(line, list(K.check_bos(ids, ctx, line=line)), len(ids), trained, regular=True)
        return out

    def _generation(self, messages, ordinal: int, kw: dict) -> list[tuple[int, int]] | None:
        """The row's ``{% generation %}`` spans (rendered once, for both the regular and the full path) when the
        regular path cross-checks this row's mask against them: every row when the template carries the markers
        itself, else rows on the sample (a separate training variant is one more render). The full path renders
        them for any row it gets without them."""
        if not self.has_markers:
            return None
        if not self.markers_inline and not self._generation_sampled(ordinal):
            return None
        from tmplcheck.validator.tokens import generation_spans

        return generation_spans(self.template, messages, kw)

    def _generation_sampled(self, ordinal: int) -> bool:
        return ordinal < self.generation_all or ordinal % self.generation_every == 0

    def _full_encoding(self, loc, sp, messages, gen, kw):
        """The full encoding of a row that is not regular (or is on a sample): the tokenizer's own Encoding with
        offsets, labels from the render structure, generation spans — what ``encode_conversations`` gives."""
        from tmplcheck.validator.tokens import finish_encoding, generation_spans

        enc = sp.as_encoding(self.tokenizer)
        if self.has_markers and gen is None:
            gen = generation_spans(self.template, messages, kw)
        return finish_encoding(loc, enc, self.template, self.tokenizer, add_special_tokens=self.add_special_tokens,
                               generation_spans=gen)

    def _fast(self, row: RowIn, messages: list[dict], loc, sp, ordinal: int, gen) -> RowOut | None:
        """A regular row's result (see :func:`checks.tokens.regular_row`), or None for the full checks."""
        ctx = self.ctx
        if not self.regular or not self.structure_ok or self._lc_sampled(ordinal) or self._prefix_sampled(ordinal):
            return None
        ids = sp.ids
        if ctx.max_length and len(ids) > ctx.max_length:
            return None
        if self.train_on != "all-assistant" and sum(m["role"] == "assistant" for m in messages) > 1:
            return None   # an assistant turn is not trained: the full checks compare the mask turn by turn
        turns = []
        if isinstance(loc, FilledLocated):   # every content placed as written; a plain row's assistant is trained
            for i, m in enumerate(messages):
                a, b = loc.at[i]
                turns.append(Turn(i, m["role"], a, b))
        else:
            for s in loc.spans:
                if s.method != "sentinel" or s.content_start is None or s.content_end <= s.content_start or \
                        (s.role == "assistant" and not s.trained):
                    return None
                turns.append(Turn(s.index, s.role, s.content_start, s.content_end))
        turns.sort(key=lambda t: t.start)
        rx = ctx.special_re
        if rx is not None and _any_match(rx, row[1]):
            return None  # K006 and whatever the control token does to the structure: the full checks say it
        gap = self.gap
        points = [t.start - gap for t in turns if t.role == "assistant" and t.index > 0
                  and messages[t.index - 1]["role"] == "user"]
        trained = K.regular_row(loc.text, ids, sp.starts, sp.ends, sp.front, len(ids) - sp.back, turns,
                                self.eot_strings, ctx, boundaries=points, generation_spans=gen,
                                monotonic=sp.encoding is None)
        if trained is None:
            return None
        return RowOut(row[0], list(K.check_bos(ids, ctx, line=row[0])), len(ids), trained, regular=True)

    def process_row(self, row: RowIn, ordinal: int = 0) -> RowOut:
        return self.process([row], ordinal)[0]

    def turns_of(self, row: RowIn, messages: list[dict], enc) -> tuple[list[Turn], list[int]]:
        """The encoding's message spans as the checks' turns (sorted by position) and the trimmed messages."""
        turns, trimmed = [], []
        for sp in enc.spans:
            i = sp.index
            _r, c, ptr, rptr, fields = row[1][i]
            if sp.content_start is None:
                turns.append(Turn(i, sp.role, -1, -1, ptr, rptr))
                continue
            turns.append(Turn(i, sp.role, sp.content_start, sp.content_end, ptr, rptr))
            if sp.method != "generated" and sp.content_end - sp.content_start != len(c):
                if enc.text[sp.content_start:sp.content_end] == c.strip():
                    trimmed.append(i)   # (else the template wrote it as a JSON string, e.g. a tool result)
            elif sp.method == "generated" and not fields and c != c.strip():
                region = enc.text[sp.content_start:sp.content_end]
                if c not in region and c.strip() in region:
                    trimmed.append(i)
        turns.sort(key=lambda t: (not t.found, t.start, t.index))
        return turns, trimmed

    def _check(self, row: RowIn, messages: list[dict], enc, ordinal: int) -> RowOut:
        line = row[0]
        ctx = self.ctx
        out: list[Finding] = []
        text, ids, offsets, labels = enc.text, enc.ids, enc.offsets, enc.labels  # fresh lists per row
        turns, trimmed = self.turns_of(row, messages, enc)
        idx = TokenIndex(offsets)
        by_index = {t.index: t for t in turns}
        for i in trimmed:
            t = by_index[i]
            out.append(finding("K012", f"{t.role} message {i}'s content is trimmed by the template: training sees "
                                       "other text than the dataset holds", severity=Severity.WARNING,
                               path=ctx.path, line=line, pointer=t.pointer))
        out.extend(K.check_content_found(turns, ctx, line=line))
        out.extend(K.check_bos(ids, ctx, line=line))
        n_trained = len(labels) - labels.count(K.IGNORE)
        if not self.structure_ok:
            out.extend(K.check_control_in_content([(t.index, t.role, row[1][t.index][1], t.pointer)
                                                   for t in turns], ctx, line=line, encode=self.encode_plain))
            out.extend(K.check_max_length(ids, [], {}, idx, ctx, line=line))
            return RowOut(line, out, len(ids), n_trained)
        cands = K.find_end_of_turns(turns, ids, idx, ctx, len(text))
        out.extend(K.check_end_of_turn(turns, ids, cands, ctx, line=line))
        eots = K.accepted(cands, ids, ctx)
        trained = frozenset(s.index for s in enc.spans if s.trained)
        every = frozenset(t.index for t in turns if t.role == "assistant")
        found = all(t.found for t in turns)
        expected = M.expected_mask(text, ids, offsets, turns, eots, idx, trained)[0] if found else None
        out.extend(M.check_mask(text, ids, offsets, labels, turns, eots, ctx, line=line, expected=expected))
        gen = getattr(enc, "generation_spans", None)
        if self.has_markers and gen is not None:
            # {% generation %} marks what each assistant turn generates, whatever the row's training flags say
            structural = expected if trained == every or not found else \
                M.expected_mask(text, ids, offsets, turns, eots, idx)[0]
            out.extend(M.check_generation_mask(text, ids, offsets, gen, turns, eots, ctx, line=line,
                                               expected=structural, idx=idx))
        out.extend(M.check_boundary_merges(ids, idx, turns, ctx, text=text, line=line))
        out.extend(K.check_control_in_content([(t.index, t.role, row[1][t.index][1], t.pointer)
                                               for t in turns], ctx, line=line, encode=self.encode_plain))
        out.extend(K.check_max_length(ids, turns, eots, idx, ctx, line=line))
        out.extend(self._generated_checks(row, enc, line))
        if self._prefix_sampled(ordinal):
            out.extend(self._prompt_checks(messages, turns, text, ids, idx, line, self.render_kw(row)))
        else:  # K009 at the generation point the template's structure gives, without rendering the prompts
            for t in turns:
                if t.role == "assistant" and t.found and t.index > 0 and messages[t.index - 1]["role"] == "user":
                    g = t.start - self.gap
                    out.extend(K.check_generation_point(ids, idx, t, g, ctx, text=text, line=line))
        r = RowOut(line, out, len(ids), n_trained)
        if self._lc_sampled(ordinal):
            # compared where the row is taken, in the gate's process (see ``llamacpp_findings``)
            skip = 1 if ids and ids[0] == ctx.bos_id and offsets[0] == (0, 0) else 0
            r.llamacpp_input = (text, list(ids[skip:]), offsets[skip:])
        return r

    def llamacpp_findings(self, r: RowOut) -> list[Finding]:
        """K010 for a row on the llama.cpp sample: llama.cpp's ids for the row's text against HF's. Runs in the gate's
        process, which loads the llama.cpp vocabulary on the first such row while the worker processes (forked
        without it) go on with their chunks, so loading it costs no time of its own."""
        if r.llamacpp_input is None:
            return []
        text, ids, offsets = r.llamacpp_input
        r.llamacpp_input = None
        lc = self._llamacpp()
        if lc is None:
            return []
        lc_ids = lc.encode(text, add_special=False, parse_special=True)
        return list(K.check_llamacpp_ids(ids, lc_ids, self.ctx, line=r.line, text=text, offsets=offsets,
                                         lc_name=lambda i: repr(lc.token_text(i))))

    def _generated_checks(self, row: RowIn, enc, line: int) -> Iterator[Finding]:
        """M020 (history rewritten: reasoning dropped), M021 (an empty reasoning block trained), M022 (the inference
        prompt is no prefix of the row under the template arguments given) from what each assistant turn
        generates (``tokens.assistant_regions``)."""
        ctx = self.ctx
        text = enc.text
        for sp in enc.spans:
            if sp.role != "assistant":
                continue
            _r, c, ptr, rptr, fields = row[1][sp.index]
            reasoning = next((v for k, v in fields if k in REASONING_KEYS and isinstance(v, str)), None)
            if sp.prompt_setting:   # (no setting helping is the template's own prefix instability: K011)
                how = f"; with {sp.prompt_setting} it is"
                yield finding("M022", f"the inference prompt before assistant message {sp.index} is not a prefix of "
                                      f"the training row under the template arguments given{how}: the model is "
                                      "trained after another header than it is prompted with",
                              path=ctx.path, line=line, pointer=rptr,
                              data={"setting": sp.prompt_setting})
            if sp.alone is not None and sp.eot_char is not None:
                kept = text[sp.content_start:sp.eot_char[1]]
                lost_text = reasoning if reasoning and reasoning.strip() and reasoning.strip() not in kept and \
                    reasoning.strip() in sp.alone else None
                if lost_text is not None:
                    n = len(self.encode_plain(lost_text.strip()))
                    key = next(k for k, v in fields if k in REASONING_KEYS and v == reasoning)
                    yield finding("M020", f"the template drops assistant message {sp.index}'s reasoning once later "
                                          f"turns follow: training never sees its {n} reasoning token(s); only the "
                                          "last assistant turn of a row keeps its reasoning",
                                  path=ctx.path, line=line, pointer=f"{ptr.rsplit('/', 1)[0]}/{key}",
                                  data={"tokens_lost": n})
                else:
                    a, b = len(self.encode_plain(sp.alone)), len(self.encode_plain(kept))
                    yield finding("M020", f"assistant message {sp.index} renders otherwise once later turns follow "
                                          f"(history rewritten): as the last turn the model generates {a} token(s), "
                                          f"in this row {b} are trained: {_show(sp.alone)} vs {_show(kept)}",
                                  path=ctx.path, line=line, pointer=ptr, data={"alone": a, "trained": b})
            if sp.method == "generated" and sp.trained and not (reasoning or "").strip() and "</think>" not in c:
                region = text[sp.content_start:sp.content_end]
                m = _EMPTY_THINK.search(region)
                if m is not None:
                    yield finding("M021", f"the template writes an empty reasoning block {m.group()!r} into assistant "
                                          f"message {sp.index}, which has no reasoning, and it is trained: the model "
                                          "learns to skip reasoning on such prompts", path=ctx.path, line=line,
                                  pointer=ptr)

    def _prompt_checks(self, messages, turns, text, ids, idx, line, kw=None) -> Iterator[Finding]:
        """K009 and K011 for the inference prompt before each assistant answer that follows a user turn."""
        by_index = {t.index: t for t in turns}
        for t in turns:
            i = t.index
            if t.role != "user" or i + 1 >= len(messages) or messages[i + 1]["role"] != "assistant":
                continue
            try:
                prompt = self.template.render(messages[: i + 1], add_generation_prompt=True, **(kw or {}))
            except Exception:  # noqa: BLE001
                continue
            ok_text = text.startswith(prompt)
            if ok_text and (len(prompt) == len(text) or idx.straddles(len(prompt)) is None):
                continue
            answer = by_index.get(i + 1)
            if ok_text and answer is not None and answer.found and answer.start >= len(prompt):
                yield from K.check_generation_point(ids, idx, answer, len(prompt), self.ctx, text=text, line=line)
                continue
            pids = list(self.tokenizer.encode(prompt, add_special_tokens=self.add_special_tokens).ids)
            yield from K.check_prefix(ids, [(t, prompt, pids, ok_text)], self.ctx, line=line)
            return  # one per row is enough to explain it


def _any_match(rx, messages) -> bool:
    """Whether ``rx`` is found in any message's content (``RowIn`` messages)."""
    search = rx.search
    for m in messages:
        if search(m[1]):
            return True
    return False


def row_in(conv) -> RowIn:
    """The pipeline's picklable view of an ingested Conversation."""
    return (conv.line, [(m.role, m.content, m.pointer, conv.role_pointer(i), m.fields)
                        for i, m in enumerate(conv.messages)], conv.render_kw() or None)


def is_plain_row(row: RowIn) -> bool:
    """Role and string content only, no template arguments: the rows the fill and the regular-row path take."""
    return not (len(row) > 2 and row[2]) and all(not m[4] for m in row[1])
