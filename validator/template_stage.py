"""The gate's template stage: render every row with the HF renderer and report T findings (and X findings from the
llama.cpp comparison when that module is available).

Template-level findings (T001 syntax, T002 undefined variables, T007 generation prompt) are reported once, with
line 0. Row-level ones (T003 raises, T004/T005 needle probe, T006 end of turn, T008/T009 sandbox and limits) carry
the row's line and the JSON pointer of the message concerned. After a T008 or T009 the template is not rendered
again: a hostile template must not cost a bound per row.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from tmplcheck.templates import Template
from tmplcheck.validator.checks.template import (
    NeedleProbe,
    Structure,
    check_end_of_turn,
    check_generation_prompt,
    check_needles,
    check_render_error,
    check_special_token_values,
    check_syntax,
    check_undefined,
    infer_structure,
    needle_probe,
)
from tmplcheck.validator.findings import Finding
from tmplcheck.validator.ingest import Conversation
from tmplcheck.validator.render import TemplateRenderError


def _cross_checker():
    try:
        from tmplcheck.validator.crosscheck import ShapeCrossCheck
    except ImportError:
        return None
    return ShapeCrossCheck()


class JinjaCross:
    """llama-server ``--jinja``: the template rendered by llama.cpp's own Jinja engine (``validator/llamacpp_jinja.py``)
    with the variables llama-server sets, against transformers' render — once per conversation shape (roles,
    message fields, template arguments), on the first row of that shape. X021 when the difference is a variable
    llama-server sets otherwise (explained by switching it), X022 when the engines themselves differ. Off (``why``
    says so) when set-up did not build the engine."""

    def __init__(self, template: Template):
        from tmplcheck.validator import llamacpp_jinja as J

        self.template = template
        self.why = "" if J.built() is not None else "llama.cpp's Jinja engine is not built (scripts/setup builds it)"
        self._shapes: set = set()

    def __call__(self, conv: Conversation, msgs: list[dict], kw: dict) -> list[Finding]:
        if self.why:
            return []
        roles = tuple(m.role for m in conv.messages)
        # a plain row's shape is its roles (never equal to the 3-tuple of tuples of a row with fields or arguments)
        shape = (roles, tuple(tuple(k for k, _ in m.fields) for m in conv.messages), tuple(sorted(kw))) \
            if kw or any(m.fields for m in conv.messages) else roles
        if shape in self._shapes:
            return []
        self._shapes.add(shape)
        from tmplcheck.validator import llamacpp_jinja as J
        from tmplcheck.validator.findings import finding

        try:
            c = J.compare_with_hf(self.template, msgs, tools=kw.get("tools"))
        except J.EngineUnavailable as e:
            self.why = str(e).splitlines()[0]
            return []
        except (UnicodeError, ValueError, TypeError):
            # a row llama.cpp's engine cannot be handed (a lone surrogate, D027, is not UTF-8): the shape is compared
            # on its next row
            self._shapes.discard(shape)
            return []
        if c.same:
            return []
        where = {"path": conv.path, "line": conv.line, "data": {"causes": list(c.causes), "engine": c.engine}}
        if c.engine:
            what = (f"llama.cpp refuses it ({c.llamacpp_error})" if c.llamacpp is None else
                    f"transformers refuses it ({c.hf_error})" if c.hf is None else "the two texts differ")
            return [finding("X022", f"llama.cpp's Jinja engine (llama-server --jinja) renders this conversation "
                                    f"otherwise than Python's jinja2 with the same variables: {what}", **where)]
        causes = "; ".join(J.CAUSES[k] for k in c.causes)
        return [finding("X021", f"llama-server --jinja renders this conversation otherwise than transformers, "
                                f"because {causes}", **where)]


@dataclass
class TemplateRowOut:
    """One row's template-stage result, computed where the row is processed (the gate's process or a worker).

    ``text`` is the render (or the render's :class:`TemplateRenderError`) so that the token stage reuses it instead of
    rendering the row again; it is dropped before the result is shipped back from a worker."""

    status: str                                   # "rendered" | "failed" | "skipped" (this process is poisoned)
    findings: list[Finding] = field(default_factory=list)   # T findings of the row (not T002: the stage adds those)
    cross: list[Finding] | None = None            # X findings (None: no llama.cpp comparison)
    undefined: frozenset[str] = frozenset()
    poison: str = ""                              # kind of a security/timeout/size failure
    text: str | BaseException | None = None
    filled: bool = False                          # rendered by filling its shape's render (``validator/opaque.py``)
    at: dict | None = None                        # then where each content is in ``text`` (not shipped either)
    #: ``cross`` is the row's shape's comparison (``ShapeCrossCheck``, ``shared=True``): one list for every row of the
    #: shape, without path and line; the stage locates the findings at the row when it takes it
    cross_shape: bool = False


def located(found: list[Finding], path: str, line: int) -> list[Finding]:
    """Copies of a shape's findings (``TemplateRowOut.cross_shape``) located at a row."""
    return [Finding(f.code, f.severity, f.message, path, line, f.pointer, f.hint, f.column, f.data) for f in found]


class TemplateRowChecker:
    """The per-row work of the template stage: render, needle probes, end of turn, llama.cpp comparison. Pure per row
    (caches per conversation shape only), so it runs in the gate's process or in worker processes alike."""

    def __init__(self, template: Template, cross=None, *, fill: bool = True,
                 render_defaults: dict[str, Any] | None = None):
        from tmplcheck.validator.checks.tools import template_traits
        from tmplcheck.validator.opaque import FillRenderer

        self.template = template
        self.cross = cross
        self.render_defaults = dict(render_defaults or {})   # --tools, --documents, --template-kwargs
        self.traits = template_traits(template.source)
        self.jinja = JinjaCross(template) if cross is not None else None
        # a content-opaque template's rows are its shape renders with the contents put in (same text, same
        # undefined names; ``tests/test_opaque.py``); any other row, or any other template, is rendered
        self.filler = FillRenderer(template) if fill else None
        self.poisoned = ""
        self._probes: dict[tuple[str, ...], NeedleProbe] = {}
        self._clean_shapes: set[tuple[str, ...]] = set()
        self._structure: Structure | None = None
        self._structure_done = False

    @property
    def structure(self) -> Structure | None:
        if not self._structure_done:
            self._structure_done = True
            if not self.template.meta.end_of_turn:
                self._structure = infer_structure(self.template)
        return self._structure

    def probe(self, roles: tuple[str, ...]) -> NeedleProbe:
        p = self._probes.get(roles)
        if p is None:
            p = self._probes[roles] = needle_probe(self.template, roles)
        return p

    def check(self, conv: Conversation) -> TemplateRowOut:
        if self.poisoned:
            return TemplateRowOut("skipped")
        name = self.template.meta.name
        msgs = conv.dicts()
        plain = conv.plain and not self.render_defaults
        kw = {} if plain else conv.render_kw(self.render_defaults)
        got = self.filler.fill(msgs) if self.filler is not None and plain else None
        r, at = got if got is not None else (None, None)
        filled = r is not None
        try:
            if r is None:
                r = self.template.render_full(msgs, **kw)
        except TemplateRenderError as e:
            poison = e.kind if e.kind in ("security", "timeout", "size") else ""
            self.poisoned = poison
            return TemplateRowOut("failed", list(check_render_error(conv, e, name)), poison=poison, text=e)
        roles = tuple(m.role for m in conv.messages)
        out: list[Finding] = []
        if roles not in self._clean_shapes:
            # T004/T005/T006 depend on the row's roles only (its shape's needle probe): a shape that gave nothing
            # gives nothing for every row of that shape
            probe = self.probe(roles)
            out = list(check_needles(conv, probe, name))
            out.extend(check_end_of_turn(conv, probe, self.template, self.structure))
            if not out:
                self._clean_shapes.add(roles)
        if not plain:
            from tmplcheck.validator.checks.tools import check_double_encoding

            out.extend(check_double_encoding(conv, self.traits))
        xs, shape = None, False
        if self.cross is not None:
            xs = self.cross(conv, self.template, r.text, filled=filled, render_kw=kw or None, shared=True)
            shape = self.cross.reused(xs)
            more = self.jinja(conv, msgs, kw) if self.jinja is not None else []
            if more:
                xs = (located(xs, conv.path, conv.line) if shape else list(xs)) + more
                shape = False
        return TemplateRowOut("rendered", out, xs, r.undefined, text=r.text, filled=filled, at=at, cross_shape=shape)


class _TemplateWork:
    """The template stage's chunk worker: render and check each usable row (the render itself is not shipped)."""

    def __init__(self, checker: TemplateRowChecker):
        self.checker = checker

    def process(self, convs, ordinals) -> list[TemplateRowOut | None]:
        out: list[TemplateRowOut | None] = []
        for conv in convs:
            if conv is None or not conv.usable or not conv.messages:
                out.append(None)
                continue
            r = self.checker.check(conv)
            r.text = r.at = None
            out.append(r)
        return out


class TemplateStage:
    name = "template"

    def __init__(self, path: str, template: Template, *, cross: bool = True, now: datetime | None = None,
                 fill: bool = True, render_defaults: dict[str, Any] | None = None):
        self.path = path
        # one clock for the whole run: templates that print today's date render the same for every row
        self.template = template.pinned(now or template.now or datetime.now())
        self.cross = _cross_checker() if cross else None
        self.cross_summary = None
        if self.cross is not None:
            from tmplcheck.validator.crosscheck import CrossSummary

            self.cross_summary = CrossSummary()
        self._unknown_to_llamacpp = 0   # rows llama.cpp cannot format (X010, folded once per file by the gate)
        self.rows = 0
        self.rendered = 0
        self.failed = 0
        self.codes: Counter[str] = Counter()
        self._started = False
        self._broken = False      # does not compile
        self._poisoned = ""       # sandbox violation or limit: stop rendering
        self._poison_at: int | None = None   # ordinal of the row that poisoned the template
        self.checker = TemplateRowChecker(self.template, self.cross, fill=fill, render_defaults=render_defaults)
        self.filled = 0
        self._undefined_seen: set[str] = set()
        #: set by the token stage when it runs this stage's per-row work in its own chunk worker (each row rendered
        #: once for both stages): the token stage then hands each row's :class:`TemplateRowOut` to
        #: :meth:`take_row`, in row order, and this stage's own ``chunk_worker``/``take`` do nothing
        self.attached = False

    @property
    def skipped(self) -> int:
        """Rows not rendered because the template does not compile or was poisoned by an earlier row."""
        if self._broken:
            return self.rows
        if self._poison_at is not None:
            return self.rows - self._poison_at - 1
        return 0

    @property
    def _structure(self) -> Structure | None:
        return self.checker.structure

    # ------------------------------------------------------------------------------------------------- helpers
    def _template_level(self) -> Iterator[Finding]:
        self._started = True
        from tmplcheck.validator.audit import audit_template

        # the static audit (T010-T017, validator/audit.py): the syntax tree and the text, whatever the rows reach
        yield from audit_template(self.template, path=self.path, tokenizer=getattr(self, "audit_tokenizer", None))
        syntax = list(check_syntax(self.template, path=self.path))
        if syntax:
            self._broken = True
            yield from syntax
            return
        said = set(self.template.meta.tokens_undefined)   # T020 says these, more precisely
        yield from (f for f in check_undefined(self.template, path=self.path)
                    if f.data.get("variable") not in said)
        from tmplcheck.validator.checks.template import undefined_names

        self._undefined_seen.update(undefined_names(self.template))
        yield from check_generation_prompt(self.template, path=self.path)
        yield from check_special_token_values(self.template, path=self.path)
        self.checker.structure  # noqa: B018 - inferred once here, before any worker is forked

    def _count(self, found: list[Finding]) -> list[Finding]:
        self.codes.update(f.code for f in found)
        return found

    # ---------------------------------------------------------------------------------------------------- stage
    def check(self, conv: Conversation) -> Iterator[Finding]:
        out: list[Finding] = []
        if not self._started:
            out.extend(self._template_level())
        ordinal = self.rows
        self.rows += 1
        if self._broken or self._poisoned or not conv.usable or not conv.messages:
            return iter(self._count(out))
        out.extend(self.absorb(ordinal, self.checker.check(conv), conv.line))
        return iter(out)

    # ------------------------------------------------------------------------------ split stage (see gate.py)
    def prepare(self) -> list[Finding]:
        """Template-level findings, once, before any row: also decides whether rows are rendered at all."""
        return self._count(list(self._template_level())) if not self._started else []

    def chunk_worker(self):
        return None if self.attached or self._broken else _TemplateWork(self.checker)

    def take(self, info, payload: TemplateRowOut | None) -> list[Finding]:
        return [] if self.attached else self.take_row(info, payload)

    def take_row(self, info, r: TemplateRowOut | None) -> list[Finding]:
        """One readable row's result, in row order (``info``: the gate's ``RowInfo``)."""
        ordinal = self.rows
        self.rows += 1
        if self._broken or self._poisoned or not info.usable or not info.roles or r is None:
            return []
        return self.absorb(ordinal, r, info.line)

    def take_clean(self, block, kind) -> tuple[list[Finding], None]:
        """The stage's own part of a ``CleanRows`` (``gate.py``): nothing when it is attached to the token stage,
        which takes the rows' template counts (``take_shape_rows``); an unattached stage's rows never come so."""
        if not self.attached:
            raise RuntimeError("clean rows reached an unattached template stage")
        return [], None

    def take_shape_rows(self, lines: Sequence[int], filled: Sequence[bool] | None,
                        cross: list[Finding] | None) -> tuple[list[Finding], Sequence[int]] | None:
        """``take_row`` for usable rows (with messages) rendered without findings of their own, whose llama.cpp
        comparison is their shape's ``cross`` (``TemplateRowOut(status="rendered", findings=[], cross=cross,
        filled=..., cross_shape=True)`` each), without making those objects. ``filled``: whether each was filled
        into its shape's render; None when nothing was rendered for them here (``take_row(info, None)``). Returns
        ``(cross, lines)`` when those findings are to be located at every row, else None."""
        n = len(lines)
        self.rows += n
        if filled is None or self._broken or self._poisoned:   # (a poisoning row sets _poisoned and _poison_at)
            return None
        self.rendered += n
        self.filled += sum(filled)
        if cross is None:
            return None
        self.cross_summary.add_rows(cross, n)
        if not cross:
            return None
        if any(f.code == "X010" for f in cross):
            self._unknown_to_llamacpp += n
        for f in cross:
            self.codes[f.code] += n
        return cross, lines

    def take_shape_row(self, info, filled: bool | None, cross: list[Finding] | None) -> list[Finding]:
        """:meth:`take_shape_rows` for one row, its findings located there."""
        if not info.usable or not info.roles:
            return self.take_row(info, None)
        got = self.take_shape_rows((info.line,), None if filled is None else (filled,), cross)
        return located(got[0], self.path, info.line) if got else []

    def absorb(self, ordinal: int, r: TemplateRowOut, line: int = 0) -> list[Finding]:
        """Account one row's result (in row order) and return its findings. Rows after the one that poisoned the
        template are dropped (the serial stage would not have rendered them)."""
        if self._poison_at is not None and ordinal > self._poison_at:
            return []
        out: list[Finding] = []
        if r.status == "skipped":  # a worker poisoned by an earlier row, which set _poison_at above: unreachable
            return []
        if r.status == "failed":
            self.failed += 1
            out.extend(r.findings)
            if r.poison:
                self._poisoned = r.poison
                self._poison_at = ordinal
            return self._count(out)
        self.rendered += 1
        self.filled += r.filled
        new_undef = set(r.undefined) - self._undefined_seen
        if new_undef:
            self._undefined_seen |= new_undef
            out.extend(f for f in check_undefined(self.template, path=self.path, used=new_undef)
                       if f.data.get("variable") in new_undef and "template_line" not in f.data)
        out.extend(r.findings)
        if r.cross is not None:
            xs = located(r.cross, self.path, line) if r.cross_shape else r.cross
            self.cross_summary.add(xs, same_as=r.cross if r.cross_shape else None)
            if any(f.code == "X010" for f in xs):
                self._unknown_to_llamacpp += 1   # X010 is a per-file code: the gate reports it once, with the count
            out.extend(xs)
        return self._count(out)

    def finish(self) -> Iterator[Finding]:
        out: list[Finding] = []
        if not self._started:
            out.extend(self._template_level())
        return iter(self._count(out))

    def _opacity(self) -> dict[str, Any]:
        f = self.checker.filler
        if f is None:
            return {"used": False}
        p = f.proof
        return {"used": p.opaque, "reason": p.reason} if not p.opaque else {"used": True, "trims": p.trims}

    def summary(self) -> dict[str, Any]:
        m = self.template.meta
        parts = [f"template {m.name}"]
        if m.same_as and m.same_as != m.name:
            parts.append(f"(renders like built-in {m.same_as})")
        parts.append(f": {self.rendered}/{self.rows} rows rendered")
        if self.failed:
            parts.append(f", {self.failed} failed")
        if self._broken:
            parts.append(", the template does not compile")
        if self._poisoned:
            parts.append(f", stopped after a {self._poisoned} violation ({self.skipped} rows not rendered)")
        if self._unknown_to_llamacpp > 1:
            parts.append(f"; llama.cpp does not know this template ({self._unknown_to_llamacpp} rows, X010 shown "
                         "on the first)")
        cross = self.cross_summary.as_dict() if self.cross_summary is not None else None
        if cross and cross.get("headline"):
            parts.append(f"\n  llama.cpp: {cross['headline']}")
        return {
            "template": m.name,
            "llamacpp": cross,
            "origin": m.origin,
            "sha256": self.template.sha256,
            "same_as": m.same_as,
            "rows": self.rows,
            "rows_rendered": self.rendered,
            "rows_failed": self.failed,
            "rows_skipped": self.skipped,
            "rows_filled": self.filled,
            "llamacpp_jinja": ({"ran": not self.checker.jinja.why, "reason": self.checker.jinja.why}
                               if self.checker.jinja is not None else None),
            "content_opaque": self._opacity(),
            "end_of_turn": list(m.end_of_turn or (self._structure.end_of_turn if self._structure else ())),
            "notes": list(m.notes),
            "by_code": dict(sorted(self.codes.items())),
            "headline": "".join(parts),
        }
