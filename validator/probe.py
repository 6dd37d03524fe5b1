"""Property probe: hypothesis generates conversations and checks properties of a template/tokenizer pair.

Properties (each one a function ``conv -> message | None`` that names the violation, so ``hypothesis.find`` can
shrink the failing conversation to a minimal one):

* ``deterministic``   — rendering the same conversation twice gives the same text (any conversation);
* ``render-valid``    — a valid conversation (system? (user assistant)+, clean content) renders without error;
* ``content``         — each message's content appears in the render verbatim, once, in message order;
* ``mask``            — the trainer's labels train exactly each assistant turn's content plus its end-of-turn, and
  that end-of-turn is an inference stop id (``{% generation %}`` markers agree, where the template has them);
* ``prefix``          — the inference prompt (messages up to each user turn, generation prompt on) encodes to a token
  prefix of the training row (checked exactly: both are tokenized);
* ``llama-cpp``       — llama.cpp's render differs from the HF render only in ways the cross-renderer check explains;
* ``round-trip``      — decoding the row's ids gives the rendered text back (any conversation).

Content-level properties use clean content (no whitespace at the edges, no control strings): what the gate demands
of good data. The others use everything the strategies make (unicode, empty strings, delimiters, control strings).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import HealthCheck, find, settings
from hypothesis.errors import NoSuchExample, Unsatisfiable

from tmplcheck.validator import strategies as S
from tmplcheck.validator.checks import tokens as K
from tmplcheck.validator.checks.tokens import TokenIndex


@dataclass
class _Msg:
    role: str
    content: str
    pointer: str


class _Conv:
    """The Conversation shape the row checks read (messages with pointers, path, line)."""

    def __init__(self, msgs: list[dict]):
        self.path, self.line = "<probe>", 0
        self.messages = [_Msg(m["role"], m["content"], f"/messages/{i}/content") for i, m in enumerate(msgs)]

    def dicts(self) -> list[dict]:
        return [{"role": m.role, "content": m.content} for m in self.messages]


@dataclass
class Violation:
    property: str
    message: str
    example: list[dict]

    def as_dict(self) -> dict:
        return {"property": self.property, "message": self.message, "example": self.example}


@dataclass
class ProbeResult:
    template: str
    tokenizer: str
    examples: int
    seed: int
    violations: list[Violation] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations


class Probe:
    """The properties of one template/tokenizer pair."""

    def __init__(self, template, tokenizer, *, pipeline_kw: dict | None = None,
                 keep: Callable[[str], bool] | None = None):
        from tmplcheck.validator.token_pipeline import TokenPipeline, template_control_strings

        self.template = template
        self.tokenizer = tokenizer
        self.pipeline = TokenPipeline(template, tokenizer, **(pipeline_kw or {}))
        self.keep = keep or (lambda code: True)   # the check settings' select/ignore (and --for-train)
        self.specials = tuple(dict.fromkeys(template_control_strings(template) + list(self.pipeline.ctx.special_strings[:40])))

    # -- helpers
    def _render(self, conv, **kw):
        from tmplcheck.validator.render import TemplateRenderError

        try:
            return self.template.render(conv, **kw), None
        except TemplateRenderError as e:
            return None, e

    def _encode(self, conv):
        from tmplcheck.validator.tokens import encode_conversation

        return encode_conversation(self.template, self.tokenizer, conv,
                                   add_special_tokens=self.pipeline.add_special_tokens)

    # -- properties: each returns None when it holds, else a message
    def deterministic(self, conv) -> str | None:
        a, ea = self._render(conv)
        b, eb = self._render(conv)
        if a != b:
            return "two renders of the same conversation differ"
        if (ea is None) != (eb is None):
            return "the render raised once and not the other time"
        return None

    def render_valid(self, conv) -> str | None:
        _t, e = self._render(conv)
        return None if e is None else f"a valid conversation fails to render: {e} ({e.kind})"

    def content(self, conv) -> str | None:
        from tmplcheck.validator.token_pipeline import _SENTINEL, locate_turns

        text, e = self._render(conv)
        if e is not None:
            return None  # render_valid reports it
        sent = [dict(m, content=_SENTINEL.format(i)) for i, m in enumerate(conv)]
        stext, _ = self._render(sent)
        if stext is not None:
            for i in range(len(conv)):
                n = stext.count(_SENTINEL.format(i))
                if n != 1:
                    return f"message {i} ({conv[i]['role']}) is rendered {n} times"
        turns, trimmed = locate_turns(self.template, conv, text)
        allowed = self._serving_trims()
        bad = [i for i in trimmed if conv[i]["role"] not in allowed]
        if bad:
            return (f"message {bad[0]} ({conv[bad[0]]['role']})'s content is trimmed by the template"
                    + (f" (llama.cpp's {self.template.meta.llama_cpp} format keeps it)" if self.template.meta.llama_cpp
                       else ""))
        missing = [t.index for t in turns if not t.found]
        if missing:
            return f"message {missing[0]} ({conv[missing[0]]['role']})'s content is not in the render as written"
        order = [t.index for t in turns]
        if order != sorted(order):
            return f"messages are rendered in the order {order}"
        return None

    def _serving_trims(self) -> frozenset[str]:
        """Roles whose content the serving format (llama.cpp's builtin for this template) trims too: a template that
        trims them matches serving (Llama 3, Gemma); trimming anything else changes the data."""
        name = self.template.meta.llama_cpp
        if not name:
            return frozenset()
        try:
            from tmplcheck.validator.llamacpp import trimmed_roles
        except ImportError:
            return frozenset()
        return frozenset(trimmed_roles(name))

    def mask(self, conv) -> str | None:
        text, e = self._render(conv)
        if e is not None:
            return None
        p = self.pipeline
        line = 0
        row = (line, [(m["role"], m["content"], f"/messages/{i}/content", f"/messages/{i}/role", ())
                      for i, m in enumerate(conv)])
        out = p.process_row(row)
        bad = [f for f in out.findings if f.code in ("M001", "M002", "M003", "M004", "M006", "K004", "K005", "K012")
               and self.keep(f.code)]
        if bad:
            f = bad[0]
            return f"{f.code} at {f.pointer or 'row'}: {f.message}"
        return None

    def prefix(self, conv) -> str | None:
        full, e = self._render(conv)
        if e is not None:
            return None
        ids = list(self._encode(conv).ids)
        for i, m in enumerate(conv):
            if m["role"] != "user" or i + 1 >= len(conv) or conv[i + 1]["role"] != "assistant":
                continue
            prompt, e = self._render(conv[: i + 1], add_generation_prompt=True)
            if e is not None:
                return f"the prompt up to message {i} fails to render: {e}"
            pids = list(self.tokenizer.encode(prompt, add_special_tokens=self.pipeline.add_special_tokens).ids)
            if ids[: len(pids)] != pids:
                k = K.first_divergence(ids[: len(pids)], pids)
                why = "the text differs (history rewritten)" if not full.startswith(prompt) else \
                    "the text is a prefix but its tokens are not"
                return (f"the prompt after message {i} is not a token prefix of the row: first divergence at token "
                        f"{k}; {why}")
        return None

    def llama_cpp(self, conv) -> str | None:
        from tmplcheck.validator.crosscheck import check_cross

        text, e = self._render(conv)
        if e is not None:
            return None
        for f in check_cross(_Conv(conv), self.template, text):
            if f.code == "X011":
                return f"{f.code}: {f.message}"
        return None

    def round_trip(self, conv) -> str | None:
        text, e = self._render(conv)
        if e is not None:
            return None
        enc = self.tokenizer.encode(text)
        ids = [i for i, (s, en) in zip(enc.ids, enc.offsets) if en > s or text == ""]
        back = self.tokenizer.decode(ids, skip_special_tokens=False)
        if back != text:
            k = next((j for j, (a, b) in enumerate(zip(back, text)) if a != b), min(len(back), len(text)))
            return f"decode(encode(text)) differs from the text at char {k}: {back[k:k + 20]!r} vs {text[k:k + 20]!r}"
        return None

    def properties(self) -> dict[str, tuple[Callable, object]]:
        sp = self.specials
        clean = S.valid_conversations(sp, clean=True)
        return {
            "deterministic": (self.deterministic, S.conversations(sp)),
            "render-valid": (self.render_valid, clean),
            "content": (self.content, S.valid_conversations(sp, clean=False, edges=True)),
            "mask": (self.mask, clean),
            "prefix": (self.prefix, clean),
            "llama-cpp": (self.llama_cpp, clean),
            "round-trip": (self.round_trip, S.conversations(sp, valid_only=True)),
        }


def run_probe(template, tokenizer, *, examples: int = 100, seed: int = 0, only: list[str] | None = None,
              template_name: str = "", tokenizer_name: str = "", pipeline_kw: dict | None = None,
              keep: Callable[[str], bool] | None = None) -> ProbeResult:
    """Run every property (or ``only`` those) with ``examples`` generated conversations each. ``pipeline_kw``
    (add_special_tokens, max_length) and ``keep`` (which codes count) carry the check settings."""
    probe = Probe(template, tokenizer, pipeline_kw=pipeline_kw, keep=keep)
    res = ProbeResult(template_name or template.meta.name, tokenizer_name or getattr(tokenizer, "name", ""),
                      examples, seed)
    if not only or "audit" in only:
        from tmplcheck.validator.audit import audit_template

        # the static audit (T010-T017): a payload no generated conversation reaches is still a violation
        bad = [f for f in audit_template(template, tokenizer=tokenizer) if f.severity.value == "error"]
        if bad:
            res.violations.append(Violation("audit", "; ".join(f"{f.code} {f.message}" for f in bad[:5]), []))
        else:
            res.passed.append("audit")
    cfg = settings(max_examples=examples, database=None, deadline=None, print_blob=False,
                   suppress_health_check=list(HealthCheck))
    for name, (prop, strategy) in probe.properties().items():
        if only and name not in only:
            continue
        if name == "llama-cpp":
            try:
                from tmplcheck.validator.crosscheck import check_cross  # noqa: F401
            except ImportError:
                res.skipped[name] = "the llama.cpp cross-renderer check is not available"
                continue
        try:
            example = find(strategy, lambda c, prop=prop: prop(c) is not None, settings=cfg,
                           random=random.Random(seed))
        except (NoSuchExample, Unsatisfiable):
            res.passed.append(name)
            continue
        res.violations.append(Violation(name, prop(example) or "", example))
    return res
