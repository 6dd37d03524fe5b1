"""The per-row cross check: a row's training render (HF Jinja) against llama.cpp's built-in format (X codes).

``check_cross`` compares one row's training render with llama.cpp's render of the same messages
(``validator/llamacpp.py``) and explains every difference it can — BOS/EOS on one side, trimmed content, the system
prompt folded or dropped, a preamble on one side, a format llama.cpp's detection picks otherwise, a row with what
the built-in formats cannot render (X020); what it cannot explain is X011 with a compact diff. ``ShapeCrossCheck``
makes the comparison once per conversation shape; ``CrossSummary`` counts the outcomes per dataset.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tmplcheck.validator import crossdiff as cd
from tmplcheck.validator.findings import Finding, Severity, finding
from tmplcheck.validator.ingest import REASONING_KEYS
from tmplcheck.validator.llamacpp import (UNNAMED, UnsupportedTemplate, _builtins, _render_pairs, alternates, detect,
                                          trimmed_roles)
from tmplcheck.validator.skeleton import fill, has_sentinel_chars, sentinel, skeleton


@dataclass
class _Context:
    """Per template: the llama.cpp format rows are compared with, and what llama.cpp would detect on its own."""

    source: str
    builtin: str | None          # the format rendered (template.meta.llama_cpp, else detected)
    detected: str | None         # what llama.cpp detects from the template text (None: -1)
    named: bool                  # builtin came from the template's metadata
    bos: tuple[str, ...]
    eos: tuple[str, ...]


@functools.lru_cache(maxsize=64)
def _context(source: str, meta_name: str | None, bos: str | None, eos: str | None) -> _Context:
    detected = detect(source) if source else None
    if meta_name and (meta_name in _builtins() or meta_name in UNNAMED):
        builtin, named = meta_name, True
    else:
        builtin, named = detected, False
    bos_c = tuple(x for x in (bos, *cd.KNOWN_BOS) if x)
    eos_c = tuple(x for x in (eos, *cd.KNOWN_EOS) if x)
    return _Context(source, builtin, detected, named, bos_c, eos_c)


def context_for(template: Any) -> _Context:
    meta = getattr(template, "meta", None)
    return _context(getattr(template, "source", "") or "", getattr(meta, "llama_cpp", None),
                    getattr(meta, "bos_token", None), getattr(meta, "eos_token", None))


@dataclass(frozen=True)
class _State:
    hf: cd.Messages
    ll: cd.Messages
    fmt: str


@dataclass
class _Step:
    code: str
    message: str
    index: int | None = None       # message the finding points at (None: the row)
    hint: str = ""
    data: dict[str, Any] = field(default_factory=dict)


_SIDE = {"template": "the training template", "llama": "llama.cpp"}


class _RowCheck:
    def __init__(self, ctx: _Context, conv: Any, template: Any, hf_text: str, add_gen: bool):
        self.ctx, self.conv, self.template, self.add_gen = ctx, conv, template, add_gen
        self.pairs = cd.as_pairs(conv.dicts())
        self.hf_cache: dict[cd.Messages, str | None] = {self.pairs: hf_text}
        self.ll_cache: dict[tuple[str, cd.Messages], str | None] = {}
        #: text-level normalisations found so far: ("prefix" | "suffix" | "remove", side, text)
        self.norm: list[tuple[str, str, str]] = []

    # -- rendering with caches --------------------------------------------------------------------------------------
    def hf(self, pairs: cd.Messages) -> str | None:
        if pairs not in self.hf_cache:
            try:
                self.hf_cache[pairs] = self.template.render(cd.as_dicts(pairs), add_generation_prompt=self.add_gen)
            except Exception:  # a transformed row the template refuses: that candidate simply does not apply
                self.hf_cache[pairs] = None
        return self.hf_cache[pairs]

    def ll(self, fmt: str, pairs: cd.Messages) -> str | None:
        key = (fmt, pairs)
        if key not in self.ll_cache:
            try:
                self.ll_cache[key] = _render_pairs(fmt, pairs, self.add_gen)
            except (UnsupportedTemplate, UnicodeEncodeError):
                self.ll_cache[key] = None
        return self.ll_cache[key]

    def texts(self, st: _State) -> tuple[str, str] | None:
        a, b = self.hf(st.hf), self.ll(st.fmt, st.ll)
        if a is None or b is None:
            return None
        for how, side, tok in self.norm:
            x = a if side == "template" else b
            if how == "prefix" and x.startswith(tok):
                x = x[len(tok):]
            elif how == "suffix" and x.endswith(tok):
                x = x[: len(x) - len(tok)]
            elif how == "remove":
                x = x.replace(tok, "", 1)
            if side == "template":
                a = x
            else:
                b = x
        return a, b

    def distance(self, st: _State) -> tuple[int, int] | None:
        t = self.texts(st)
        return None if t is None else cd.distance(*t)

    # -- the steps --------------------------------------------------------------------------------------------------
    def run(self) -> tuple[list[_Step], list[_Step], tuple[str, str] | None]:
        """Returns (explained steps, unexplained residue, final texts)."""
        ctx = self.ctx
        fmt = ctx.builtin
        steps: list[_Step] = []
        # llama.cpp cuts C strings at NUL: compare with the template's render of what llama.cpp saw
        cut, changed = cd.cut_at_nul(self.pairs)
        st = _State(cut if changed else self.pairs, cut, fmt)
        if changed:
            steps.append(_Step("X009", "llama.cpp cuts message text at the NUL character (C strings): "
                                       + ", ".join(f"message {i} keeps {len(cut[i][1])} of {len(self.pairs[i][1])} "
                                                   "characters" for i in changed),
                               changed[0], data={"messages": changed}))
        t = self.texts(st)
        if t is None:
            return steps, [], None
        a, b = t
        if a == b:
            return steps, [], t
        # BOS / EOS written by one side only (text level)
        pre = cd.one_sided_prefix(a, b, ctx.bos)
        if pre:
            side, tok = pre
            self.norm.append(("prefix", side, tok))
            steps.append(_Step("X001", f"{_SIDE[side]} writes {tok} at the start, "
                                       f"{_SIDE['llama' if side == 'template' else 'template']} does not"
                                       + (" (llama.cpp leaves BOS to the tokenizer)" if side == "template" else ""),
                               None, data={"side": side, "token": tok}))
        post = cd.one_sided_suffix(*self.texts(st), ctx.eos)
        if post and post[0] == "template":  # llama.cpp never appends EOS: an extra token there is an end-of-turn
            side, tok = post
            self.norm.append(("suffix", side, tok))
            steps.append(_Step("X002", f"{_SIDE[side]} ends the text with an extra {tok}", None,
                               data={"side": side, "token": tok}))
        # text before the first turn that only one side writes (date lines, default system prompts)
        a, b = self.texts(st)
        if a != b:
            more, _ = self._residual(st, a, b, only_preamble=True)
            for step in more:
                self.norm.extend(("remove", step.data["side"], x) for x in step.data.pop("parts"))
                steps.append(step)
        best = self.distance(st)
        for _round in range(2):
            if best[0] == 0:
                break
            progressed = False
            for group in (self._trim, self._system, self._format):
                if best[0] == 0:
                    break
                found = group(st, best)
                if found:
                    st, best, step = found
                    steps.append(step)
                    progressed = True
            if not progressed:
                break
        t = self.texts(st)
        if t is None or best[0] == 0:
            return steps, [], t
        more, residue = self._residual(st, *t)
        return steps + more, residue, t

    def _pick(self, cands: list[tuple[_State, _Step]], best: tuple[int, int]):
        """The candidate that removes the most differing regions (never adding characters), if any removes one."""
        winner = None
        for st, step in cands:
            d = self.distance(st)
            if d is None or d[0] >= best[0] or d[1] > best[1]:
                continue
            if winner is None or d < winner[1]:
                winner = (st, d, step)
        return winner

    def _trim(self, st: _State, best: int):
        cands = []
        roles = trimmed_roles(st.fmt)
        if roles:
            hf2, changed = cd.trim_roles(st.hf, roles)
            if changed:
                cands.append((_State(hf2, st.ll, st.fmt), _Step(
                    "X003", f"llama.cpp's {st.fmt} format strips whitespace around {', '.join(sorted(roles))} "
                            "content; the training text keeps it: " + self._edges(st.hf, changed),
                    changed[0], hint="strip the content in the dataset (or serve with --jinja)",
                    data={"side": "llama", "messages": changed})))
        for subset in ({"system", "user", "assistant", "tool"}, {"system"}, {"user"}, {"assistant"}):
            ll2, changed = cd.trim_roles(st.ll, subset, unicode=True)
            if not changed:
                continue
            cands.append((_State(st.hf, ll2, st.fmt), _Step(
                "X003", "the training template strips whitespace around content that llama.cpp's "
                        f"{st.fmt} format keeps: " + self._edges(st.ll, changed),
                changed[0], hint="strip the content in the dataset",
                data={"side": "template", "messages": changed})))
        return self._pick(cands, best)

    @staticmethod
    def _edges(pairs: cd.Messages, idx: list[int]) -> str:
        out = []
        for i in idx[:3]:
            c = pairs[i][1]
            lead = c[: len(c) - len(c.lstrip())]
            trail = c[len(c.rstrip()):]
            bits = ([f"leading '{cd.visible(lead)}'"] if lead else []) + ([f"trailing '{cd.visible(trail)}'"]
                                                                         if trail else [])
            out.append(f"message {i} ({pairs[i][0]}) has {' and '.join(bits) or 'edge whitespace'}")
        return "; ".join(out) + (f"; {len(idx) - 3} more" if len(idx) > 3 else "")

    def _system(self, st: _State, best: int):
        si = cd.system_index(st.hf)
        if si is None or cd.system_index(st.ll) is None:
            return None
        cands: list[tuple[_State, _Step]] = []
        fmt = st.fmt
        cands.append((_State(st.hf, cd.drop_system(st.ll), fmt), _Step(
            "X005", f"the training template drops the system message; llama.cpp's {fmt} format renders it, so "
                    "the served model sees a system prompt it was never trained with", si,
            data={"side": "template"})))
        cands.append((_State(cd.drop_system(st.hf), st.ll, fmt), _Step(
            "X005", f"llama.cpp's {fmt} format drops the system message that training renders", si,
            data={"side": "llama"})))
        for into in ("first", "last"):
            for sep in ("\n\n", "\n", " ", ""):
                for trim in (False, True):
                    shown = f"'{cd.visible(sep)}'"
                    folded = cd.fold_system(st.hf, into=into, sep=sep, trim=trim)
                    if folded:
                        cands.append((_State(folded, st.ll, fmt), _Step(
                            "X004", f"llama.cpp's {fmt} format folds the system message into the {into} user turn "
                                    f"(joined with {shown}); the training template renders it differently", si,
                            data={"side": "llama", "into": into, "sep": sep})))
                    folded = cd.fold_system(st.ll, into=into, sep=sep, trim=trim)
                    if folded:
                        cands.append((_State(st.hf, folded, fmt), _Step(
                            "X004", f"the training template folds the system message into the {into} user turn "
                                    f"(joined with {shown}); llama.cpp's {fmt} format renders it "
                                    + ("in place" if into == "last" else "as its own turn"), si,
                            data={"side": "template", "into": into, "sep": sep})))
        for sep in ("\n\n", "\n"):
            shown = f"'{cd.visible(sep)}'"
            cands.append((_State(cd.append_to_system(st.hf, sep), st.ll, fmt), _Step(
                "X004", f"llama.cpp's {fmt} format separates the system prompt from the next turn with {shown}, "
                        "the training template does not", si, data={"side": "llama", "sep": sep})))
            cands.append((_State(st.hf, cd.append_to_system(st.ll, sep), fmt), _Step(
                "X004", f"the training template separates the system prompt from the next turn with {shown}, "
                        f"llama.cpp's {fmt} format does not", si, data={"side": "template", "sep": sep})))
        return self._pick(cands, best)

    def _format(self, st: _State, best: int):
        cands = []
        how = "named in the template's metadata" if self.ctx.named else "detected from the template text"
        for alt in alternates(st.fmt):
            cands.append((_State(st.hf, st.ll, alt), _Step(
                "X007", f"llama.cpp renders this row in its {st.fmt} format ({how}); the training text matches "
                        f"its {alt} format", None,
                hint=f"serve with --chat-template {alt} (or --jinja)",
                data={"format": st.fmt, "matches": alt})))
        return self._pick(cands, best)

    def _residual(self, st: _State, a: str, b: str, *, only_preamble: bool = False
                  ) -> tuple[list[_Step], list[_Step]]:
        """Classify what is left, region by region: preambles, generation prompt, template-only markup."""
        ops = cd.diff_ops(a, b)
        spans_a = cd.content_spans(a, st.hf)
        spans_b = cd.content_spans(b, st.ll)
        start_a = cd.first_turn_start(spans_a, st.hf)
        start_b = cd.first_turn_start(spans_b, st.ll)
        groups: dict[str, list[tuple[cd.Op, str]]] = {}
        residue: list[cd.Op] = []
        # only a row that ends without an assistant turn is a prompt whose assistant cue can differ
        prompt_row = bool(st.hf) and st.hf[-1][0] != "assistant"
        for op in ops:
            kind = op.kind
            ins_a, ins_b = a[op.a0:op.a1], b[op.b0:op.b1]
            if kind == "template_only" and start_a is not None and op.a1 <= start_a \
                    and not cd.overlaps(spans_a, op.a0, op.a1) and ins_a.strip():
                groups.setdefault("pre_template", []).append((op, ins_a))
            elif kind == "llama_only" and start_b is not None and op.b1 <= start_b \
                    and not cd.overlaps(spans_b, op.b0, op.b1) and ins_b.strip():
                groups.setdefault("pre_llama", []).append((op, ins_b))
            elif kind == "template_only" and op.a1 == len(a) and op.b0 == len(b) and self.add_gen and prompt_row:
                groups.setdefault("gen_template", []).append((op, ins_a))
            elif kind == "llama_only" and op.b1 == len(b) and op.a0 == len(a) and prompt_row and not self.add_gen:
                groups.setdefault("gen_llama", []).append((op, ins_b))
            elif kind == "template_only" and not cd.overlaps(spans_a, op.a0, op.a1) \
                    and cd.template_literals_only(ins_a, self.ctx.source):
                groups.setdefault("extras", []).append((op, ins_a))
            else:
                residue.append(op)
        if only_preamble:
            groups = {k: v for k, v in groups.items() if k.startswith("pre_")}
        steps: list[_Step] = []
        fmt = st.fmt
        if "pre_template" in groups:
            txt = " … ".join(x for _, x in groups["pre_template"])
            what = "Llama 3.1 date lines" if "Cutting Knowledge Date:" in txt else "a preamble"
            steps.append(_Step("X006", f"the training template writes {what} that llama.cpp's {fmt} format never "
                                       f"writes: '{_short(txt)}'", self._index_at(spans_a, groups['pre_template'][0][0].a0),
                               hint="serve with --jinja, or pin/remove the preamble in the training template",
                               data={"side": "template", "text": txt[:500],
                                     "parts": [x for _, x in groups["pre_template"]]}))
        if "pre_llama" in groups:
            txt = " … ".join(x for _, x in groups["pre_llama"])
            steps.append(_Step("X006", f"llama.cpp's {fmt} format writes a preamble the training template does "
                                       f"not: '{_short(txt)}'", None,
                               data={"side": "llama", "text": txt[:500], "parts": [x for _, x in groups["pre_llama"]]}))
        if "gen_template" in groups:
            txt = groups["gen_template"][0][1]
            steps.append(_Step("X008", f"llama.cpp's {fmt} format ignores add_generation_prompt; the template "
                                       f"appends '{_short(txt)}'", None, data={"side": "llama", "text": txt}))
        if "gen_llama" in groups:
            txt = groups["gen_llama"][0][1]
            steps.append(_Step("X008", f"llama.cpp's {fmt} format appends '{_short(txt)}' although no generation "
                                       "prompt was asked for", None, data={"side": "template", "text": txt}))
        if "extras" in groups:
            bits = list(dict.fromkeys(x for _, x in groups["extras"]))
            how = "named in the template's metadata" if self.ctx.named else "detected by llama.cpp"
            steps.append(_Step("X007", f"the training template writes markup that llama.cpp's {fmt} format ({how}) "
                                       "never writes: " + ", ".join(f"'{_short(x, 40)}'" for x in bits[:4])
                                       + (f" and {len(bits) - 4} more" if len(bits) > 4 else ""),
                               self._index_at(spans_a, groups["extras"][0][0].a0),
                               hint="serve with --jinja so that the server renders the template itself",
                               data={"format": fmt, "text": bits[:10]}))
        unexplained = []
        if residue:
            op = residue[0]
            idx = self._index_at(spans_a, op.a0)
            where = f" (near message {idx}, {st.hf[idx][0]})" if idx is not None else ""
            unexplained.append(_Step(
                "X011", f"training and llama.cpp's {fmt} render differ at character {op.a0}{where}: "
                        f"template {cd.snippet(a, op.a0, op.a1)} vs llama.cpp {cd.snippet(b, op.b0, op.b1)}"
                        + (f"; {len(residue) - 1} more difference(s)" if len(residue) > 1 else ""),
                idx, hint=_hint_for(fmt),
                data={"format": fmt, "position": op.a0, "llama_position": op.b0, "regions": len(residue),
                      "template": a[op.a0:op.a1][:200], "llama": b[op.b0:op.b1][:200]}))
        return steps, unexplained

    @staticmethod
    def _index_at(spans, pos: int) -> int | None:
        return cd.message_at(spans, pos)


#: Built-ins llama.cpp's own notes call lossy skeletons of richer formats.
_LOSSY = {
    "gpt-oss": "llama.cpp's gpt-oss built-in is a bare Harmony skeleton (no default system header, no channels)",
    "deepseek3": "llama.cpp's deepseek3 built-in has no <think> handling and places the system prompt in place",
    "granite": "llama.cpp's granite (3.x) built-in prints assistant_tool_call as a role name",
    "openchat": "llama.cpp's openchat built-in prints a system message bare",
}


def _hint_for(fmt: str) -> str:
    base = "compare the template with its upstream original; if the model will be served with this format, " \
           "the training text must match it"
    return f"{_LOSSY[fmt]}; serve with --jinja" if fmt in _LOSSY else base


def _short(s: str, n: int = 80) -> str:
    v = cd.visible(s)
    return v if len(v) <= n else v[: n - 1] + "…"


def row_features(messages: Iterable[dict], render_kw: dict | None = None) -> list[str]:
    """What a conversation (message dicts, and its template arguments) holds beyond role and string content that
    llama.cpp's built-in formats cannot render (X020)."""
    kw = dict(render_kw or {})
    msgs = list(messages)
    out = []
    if kw.get("tools"):
        out.append("tool definitions")
    if any(m.get("tool_calls") for m in msgs):
        out.append("tool calls")
    if out and any(m.get("role") in ("tool", "ipython", "function") for m in msgs):
        out.append("tool results")
    if any(isinstance(m.get(k), str) and m.get(k) for m in msgs for k in REASONING_KEYS):
        out.append("reasoning")
    if any(isinstance(m.get("content"), list) for m in msgs):
        out.append("typed content")
    if kw.get("documents"):
        out.append("documents")
    other = sorted(k for k in kw if k not in ("tools", "documents"))
    if other:
        out.append("template arguments (" + ", ".join(other) + ")")
    return out


def check_cross(conv: Any, template: Any, hf_text: str, *, add_generation_prompt: bool = False,
                render_kw: dict | None = None) -> Iterator[Finding]:
    """X findings for one row: llama.cpp's render of ``conv`` compared with the training render ``hf_text``.

    ``template`` is a ``tmplcheck.templates.Template`` (``.source``, ``.meta.llama_cpp``, ``.meta.bos_token``,
    ``.meta.eos_token``, ``.render``). Rows that render identically yield nothing. Never raises on bad data.
    """
    ctx = context_for(template)
    path, line = getattr(conv, "path", ""), getattr(conv, "line", 0)

    def ptr(i: int | None) -> str:
        if i is None or i >= len(conv.messages):
            return ""
        return conv.messages[i].pointer

    features = row_features(conv.dicts(), {**(conv.render_kw() if hasattr(conv, "render_kw") else {}),
                                           **(render_kw or {})})
    if features and ctx.builtin is not None:
        yield finding("X020", f"llama.cpp's {ctx.builtin} format renders role and content only; this row also has "
                              f"{', '.join(features)}, which a server using it never sends (not compared further)",
                      path=path, line=line, hint="serve with llama-server --jinja",
                      data={"format": ctx.builtin, "outcome": "explained", "features": features})
        return
    if ctx.builtin is None:
        yield finding("X010", "llama.cpp recognises none of its built-in chat formats in this template "
                              "(llama_chat_apply_template returns -1): a server that does not run the Jinja "
                              "template (llama-server without --jinja, Ollama-style importers) will use another "
                              "format", path=path, line=line, hint="serve with --jinja, or pick a built-in with "
                                                                  "--chat-template NAME",
                      data={"format": None, "outcome": "unknown"})
        return
    try:
        row = _RowCheck(ctx, conv, template, hf_text, add_generation_prompt)
        steps, residue, _ = row.run()
    except Exception as e:  # never let one odd row stop the gate: say what happened
        yield finding("X011", f"could not compare with llama.cpp's {ctx.builtin} format: {type(e).__name__}: {e}",
                      path=path, line=line, data={"format": ctx.builtin, "outcome": "unexplained"})
        return
    if ctx.named and ctx.detected != ctx.builtin:
        a = row.ll(ctx.builtin, row.pairs)
        b = row.ll(ctx.detected, row.pairs) if ctx.detected else None
        if ctx.detected is None:
            steps.insert(0, _Step("X010", f"llama.cpp does not recognise this template's text (-1); rows match its "
                                          f"{ctx.builtin} format only when the server is told --chat-template "
                                          f"{ctx.builtin}", None, hint=f"serve with --chat-template {ctx.builtin}"))
        elif a is not None and b is not None and a != b:
            steps.insert(0, _Step("X007", f"a server that reads this template detects llama.cpp's {ctx.detected} "
                                          f"format, which renders this row differently from {ctx.builtin}", None,
                                  hint=f"serve with --chat-template {ctx.builtin}",
                                  data={"format": ctx.detected, "matches": ctx.builtin}))
    outcome = "unexplained" if residue else ("explained" if steps else "identical")
    for s in steps + residue:
        data = {"format": ctx.builtin, "outcome": outcome, **{k: v for k, v in s.data.items() if k != "parts"}}
        yield finding(s.code, s.message, path=path, line=line, pointer=ptr(s.index), hint=s.hint, data=data)


# ----------------------------------------------------------------------------------------------------- the summary
_VIEW = {
    "X001": "no BOS in the text (the tokenizer adds it)",
    "X002": "no EOS after the last turn",
    "X003": "message text with its edge whitespace stripped",
    "X004": "the system prompt in another place",
    "X005": "a different set of system prompts",
    "X006": "no preamble (date lines, default system prompt)",
    "X007": "a different format than the template's",
    "X008": "a different assistant cue at the end",
    "X009": "messages cut at NUL characters",
    "X011": "text that differs in unexplained ways",
}


@dataclass
class CrossSummary:
    """Per-dataset counts of the cross check: ``add(findings)`` once per row (all of the row's findings)."""

    builtin: str | None = None
    rows: int = 0
    identical: int = 0
    equivalent: int = 0      # only info-level differences (BOS/EOS the tokenizer handles, the assistant cue)
    explained: int = 0
    unexplained: int = 0
    unknown: int = 0
    by_code: Counter = field(default_factory=Counter)
    _last: Any = field(default=None, repr=False, compare=False)   # (same_as, codes, count name) of the last add

    def add(self, findings: Iterable[Finding], *, same_as: Any = None) -> None:
        """``same_as``: an object standing for these findings (a shape's shared list): the next row with the same
        object is counted as this one without looking at its findings again."""
        if same_as is not None and self._last is not None and self._last[0] is same_as:
            self.rows += 1
            self.by_code.update(self._last[1])
            setattr(self, self._last[2], getattr(self, self._last[2]) + 1)
            return
        xs = [f for f in findings if f.code.startswith("X")]
        self.rows += 1
        for f in xs:
            if f.data.get("format") and not self.builtin:
                self.builtin = f.data["format"]
        codes = {f.code for f in xs}
        self.by_code.update(codes)
        if not xs:
            kind = "identical"
        elif "X010" in codes and any(f.data.get("outcome") == "unknown" for f in xs):
            kind = "unknown"
        elif any(f.severity is Severity.ERROR for f in xs):
            kind = "unexplained"
        elif all(f.severity is Severity.INFO for f in xs):
            kind = "equivalent"
        else:
            kind = "explained"
        setattr(self, kind, getattr(self, kind) + 1)
        self._last = (same_as, codes, kind) if same_as is not None else None

    def add_rows(self, shared: Sequence[Finding], n: int) -> None:
        """``add(shared, same_as=shared)`` for ``n`` rows of one shape."""
        if n <= 0:
            return
        self.add(shared, same_as=shared)
        if n > 1:
            same_as, codes, kind = self._last
            self.rows += n - 1
            for c in codes:
                self.by_code[c] += n - 1
            setattr(self, kind, getattr(self, kind) + n - 1)

    def headline(self) -> str:
        fmt = f"llama.cpp's {self.builtin} format" if self.builtin else "llama.cpp"
        if self.rows == 0:
            return "llama.cpp comparison: no rows compared."
        if self.unknown == self.rows:
            return ("llama.cpp does not recognise this template: a llama.cpp/Ollama-style server that does not run "
                    "the Jinja template will format every row differently from training.")
        same = self.identical + self.equivalent
        if same == self.rows:
            tail = "" if self.identical == self.rows else \
                " apart from BOS/EOS tokens the tokenizer handles"
            return (f"{fmt}: all {self.rows} rows render identically{tail}, so a llama.cpp/Ollama-style server "
                    "sees exactly what training saw.")
        from tmplcheck.validator.codes import RULES

        top = [c for c, _ in self.by_code.most_common() if c in _VIEW and c != "X011"
               and RULES[c].severity is not Severity.INFO][:3]
        seen = ", ".join(f"{_VIEW[c]} ({self.by_code[c]} rows)" for c in top)
        s = (f"{fmt}: {same} of {self.rows} rows render identically (up to BOS/EOS), {self.explained} differ in "
             f"explained ways, {self.unexplained} unexplained")
        if self.unknown:
            s += f", {self.unknown} not comparable"
        s += "; "
        if seen:
            s += f"a llama.cpp/Ollama-style server would show the model {seen} where training saw the template's text"
        else:
            s += "a llama.cpp/Ollama-style server would show the model a differently formatted text than training"
        if self.unexplained:
            s += f", and {self.unexplained} rows in a format nothing explains"
        return s + "."

    def as_dict(self) -> dict[str, Any]:
        return {"format": self.builtin, "rows": self.rows, "identical": self.identical,
                "equivalent": self.equivalent, "explained": self.explained,
                "unexplained": self.unexplained, "unknown": self.unknown,
                "by_code": dict(sorted(self.by_code.items())), "headline": self.headline()}


# ------------------------------------------------------------------------------------------- once per conversation shape
#: outcomes whose findings say nothing about the contents (the BOS/EOS one renderer writes), so they hold for every
#: row of the shape
_SHAPE_CODES = frozenset({"X001", "X002"})


@dataclass
class _SentinelConv:
    messages: list[Any]
    path: str = ""
    line: int = 0

    def dicts(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.messages]


@dataclass
class _SentinelMessage:
    role: str
    content: str
    pointer: str = ""


class ShapeCrossCheck:
    """:func:`check_cross` made once per conversation shape (its roles) instead of once per row.

    llama.cpp's built-in formats paste each content into text fixed by the roles, trimmed in some formats and cut at
    NUL (``LLAMA_CPP_NOTES``: no format looks inside content). So for a row whose contents are non-empty, have no
    edge whitespace and no NUL, llama.cpp's render is its render of the shape with sentinel contents, filled with the
    row's contents. When the template's render of the row is likewise the template's sentinel render filled in (the
    row's text proves it), both renders are the shape's renders with the same contents put in the same places, and
    the comparison of the shape holds for the row. It is reused only when it found nothing, or only the BOS/EOS that
    one side writes; every other row is compared on its own."""

    def __init__(self) -> None:
        self._shapes: dict[tuple[str, ...], Any] = {}
        self._shared: set[int] = set()   # ids of the shapes' lists of findings

    def __call__(self, conv: Any, template: Any, hf_text: str, *, filled: bool = False,
                 render_kw: dict | None = None, shared: bool = False) -> list[Finding]:
        """``filled``: ``hf_text`` was made by filling the template's sentinel render of this shape with the row's
        contents (``validator/opaque.py``; the same sentinel render as here), so that need not be checked again.
        ``render_kw``: the template arguments every row gets (``--tools`` ...); a row with any, or with fields beyond
        role and content, is compared on its own. ``shared``: where the shape's comparison holds for the row, return
        the shape's own findings (no path or line; the same list for every such row, not to be changed) instead of
        copies located at the row: :meth:`reused` tells which it is, and the caller locates them where it takes the
        row (``TemplateStage.absorb``), so that a worker ships one list per chunk, not a finding per row."""
        if render_kw or not getattr(conv, "plain", True):
            return list(check_cross(conv, template, hf_text, render_kw=render_kw))
        msgs = conv.messages
        contents = [m.content for m in msgs]
        if msgs and all(type(c) is str and c and not c[0].isspace() and not c[-1].isspace() and "\x00" not in c
                        and not has_sentinel_chars(c) for c in contents):   # (c == c.strip(), without a copy)
            roles = tuple(m.role for m in msgs)
            entry = self._shapes.get(roles, _MISSING)
            if entry is _MISSING:
                entry = self._shapes[roles] = self._shape(template, roles)
                if entry is not None:
                    self._shared.add(id(entry[2]))   # kept alive in _shapes: the id stays this list's
            if entry is not None:
                skeleton, where, found = entry
                if filled or fill(skeleton, where, contents)[0] == hf_text:
                    if shared:
                        return found
                    return [Finding(f.code, f.severity, f.message, conv.path, conv.line, f.pointer, f.hint, f.column,
                                    f.data) for f in found]
        return list(check_cross(conv, template, hf_text))

    def reused(self, found: list[Finding]) -> bool:
        """Whether ``found`` (from a ``shared=True`` call) is a shape's own list of findings, not yet located."""
        return id(found) in self._shared

    @staticmethod
    def _shape(template: Any, roles: tuple[str, ...]):
        """The template's sentinel render of the shape (the one ``tokens.locate_messages`` fills in), the sentinels'
        places, and the shape's comparison when it can be reused; None otherwise."""
        sk = skeleton(template, [{"role": r, "content": ""} for r in roles], list(range(len(roles))), {})
        if sk is None:  # the template refuses the shape, or writes a content other than once
            return None
        text, where = sk
        conv = _SentinelConv([_SentinelMessage(r, sentinel(i)) for i, r in enumerate(roles)])
        found = list(check_cross(conv, template, text))
        if any(f.code not in _SHAPE_CODES or f.pointer for f in found):
            return None
        return text, where, found


_MISSING = object()
