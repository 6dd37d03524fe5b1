"""T checks: small pure functions over a template (and a row's role sequence) that yield findings.

The structural checks render *needles* (a unique token per message, ``NDL000Q``, ``NDL001Q``...) instead of the
row's own text, so that where each message lands in the output is unambiguous: dropped content (T004), repeated or
moved content (T005), what follows an assistant answer (T006) and the generation prompt (T007). A needle probe
depends only on the role sequence, so callers cache it per sequence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import jinja2.meta
import jinja2.nodes

from tmplcheck.validator.findings import Finding, Severity, finding
from tmplcheck.validator.render import TemplateLoadError, TemplateRenderError, compile_template, make_environment

if TYPE_CHECKING:
    from tmplcheck.templates import Template
    from tmplcheck.validator.ingest import Conversation

#: Variables every render gets from apply_chat_template itself (or the environment's globals).
PROVIDED = frozenset({"messages", "tools", "documents", "add_generation_prompt", "raise_exception", "strftime_now",
                      "range", "dict", "namespace", "cycler", "joiner", "lipsum"})


def needle(i: int) -> str:
    return f"NDL{i:03d}Q"


def needle_messages(roles: Sequence[str]) -> list[dict[str, str]]:
    return [{"role": r, "content": needle(i)} for i, r in enumerate(roles)]


def _show(s: str, n: int = 80) -> str:
    s = s if len(s) <= n else s[:n] + "…"
    return repr(s)


# --------------------------------------------------------------------------------------------------- probing
@dataclass
class NeedleProbe:
    roles: tuple[str, ...]
    text: str | None = None
    error: TemplateRenderError | None = None
    occurrences: list[list[int]] = field(default_factory=list)  # start offsets of each message's needle

    def span(self, i: int) -> tuple[int, int] | None:
        occ = self.occurrences[i] if i < len(self.occurrences) else []
        return (occ[0], occ[0] + len(needle(i))) if occ else None


def needle_probe(template: Template, roles: Sequence[str], *, add_generation_prompt: bool = False) -> NeedleProbe:
    probe = NeedleProbe(tuple(roles))
    try:
        probe.text = template.render(needle_messages(roles), add_generation_prompt=add_generation_prompt)
    except TemplateRenderError as e:
        probe.error = e
        return probe
    except TemplateLoadError as e:
        probe.error = TemplateRenderError(e.message, "error")
        return probe
    for i in range(len(roles)):
        probe.occurrences.append([m.start() for m in re.finditer(re.escape(needle(i)), probe.text)])
    return probe


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return _cut_partial(a[:n])


def _cut_partial(s: str) -> str:
    """Drop a control token cut in half at the end (``<|end|>\n<|`` -> ``<|end|>\n``)."""
    for open_, close in (("<", ">"), ("[", "]")):
        i = s.rfind(open_)
        if i >= 0 and s.find(close, i) < 0:
            s = s[:i]
    return s


@dataclass
class Structure:
    ok: bool
    reason: str = ""
    end_of_turn: tuple[str, ...] = ()
    role_headers: dict[str, str] = field(default_factory=dict)
    generation_prompt: str = ""
    system_role: bool = True


def infer_structure(template: Template) -> Structure:
    """Infer end-of-turn, headers and generation prompt by rendering needles in a two-exchange conversation."""
    p = needle_probe(template, ("user", "assistant", "user", "assistant"))
    if p.error is not None or p.text is None:
        return Structure(False, f"the template fails on user/assistant/user/assistant: {p.error}")
    spans = [p.span(i) for i in range(4)]
    if any(s is None for s in spans):
        return Structure(False, "the template drops content of a plain two-exchange conversation")
    t = p.text
    (u0s, u0e), (a0s, a0e), (u1s, u1e), (a1s, a1e) = spans  # type: ignore[misc]
    between, tail = t[a0e:u1s], t[a1e:]
    closer = _common_prefix(between, tail)     # what ends an answer, in the middle and at the end
    eot = closer.strip()
    user_header = between[len(closer):]
    gen = ""
    try:
        with_gp = template.render(needle_messages(["user"]), add_generation_prompt=True)
        without = template.render(needle_messages(["user"]))
        gen = with_gp[len(_common_prefix(with_gp, without)):]
    except (TemplateRenderError, TemplateLoadError):
        pass
    assistant_header = gen or t[u1e:a1s]
    end_of_turn = (eot,) if eot else ()
    system_role = True
    sp = needle_probe(template, ("system", "user"))
    if sp.error is not None or not sp.occurrences or not sp.occurrences[0]:
        system_role = False
    headers = {"user": user_header, "assistant": assistant_header}
    return Structure(True, "", end_of_turn, headers, gen, system_role)


#: Conversations on which two templates must agree to count as the same format.
PROBE_SHAPES: tuple[tuple[str, ...], ...] = (
    ("user",), ("system", "user"), ("user", "assistant"), ("system", "user", "assistant"),
    ("user", "assistant", "user", "assistant"), ("system", "user", "assistant", "user", "assistant"),
    ("user", "user"),
)


def renders_like(a: Template, b: Template) -> bool:
    """Whether two templates give the same text (or both raise) on every probe shape, with and without a
    generation prompt; content is padded with spaces so that trimming differences show."""
    for shape in PROBE_SHAPES:
        msgs = [{"role": r, "content": f" {needle(i)} x "} for i, r in enumerate(shape)]
        for agp in (False, True):
            outs = []
            for t in (a, b):
                try:
                    outs.append(("ok", t.render(msgs, add_generation_prompt=agp)))
                except TemplateRenderError as e:
                    outs.append((e.kind, ""))
                except TemplateLoadError:
                    return False
            if outs[0] != outs[1]:
                return False
    return True


# ------------------------------------------------------------------------------------------- template-level
def check_syntax(template: Template, *, path: str = "") -> Iterator[Finding]:
    """T001: the template compiles (its renderer is compiled as a side effect of the check)."""
    try:
        template.renderer
    except TemplateLoadError as e:
        yield finding("T001", f"template {template.meta.name!r} does not compile: {e.message}", path=path,
                      data={"template_line": e.lineno})


def _guarded_names(ast: jinja2.nodes.Template) -> set[str]:
    names = set()
    for test in ast.find_all(jinja2.nodes.Test):
        if test.name in ("defined", "undefined", "none") and isinstance(test.node, jinja2.nodes.Name):
            names.add(test.node.name)
    for flt in ast.find_all(jinja2.nodes.Filter):
        if flt.name in ("default", "d") and isinstance(flt.node, jinja2.nodes.Name):
            names.add(flt.node.name)
    return names


def undefined_names(template: Template) -> dict[str, int]:
    """Names the template reads that nobody provides and nothing guards, with the line of their first use."""
    env = make_environment()
    try:
        ast = env.parse(template.source)
    except jinja2.TemplateSyntaxError:
        return {}
    stored = {n.name for n in ast.find_all(jinja2.nodes.Name) if n.ctx in ("store", "param")}
    free = (jinja2.meta.find_undeclared_variables(ast) - PROVIDED - set(template.context) - _guarded_names(ast)
            - stored)
    out: dict[str, int] = {}
    for node in ast.find_all(jinja2.nodes.Name):
        if node.name in free and node.ctx == "load":
            out[node.name] = min(out.get(node.name, node.lineno), node.lineno)
    return dict(sorted(out.items(), key=lambda kv: kv[1]))


def check_undefined(template: Template, *, path: str = "", used: Iterable[str] = ()) -> Iterator[Finding]:
    """T002: statically free names, plus names a render printed while undefined (``used``)."""
    static = undefined_names(template)
    for name, line in static.items():
        yield finding("T002", f"template {template.meta.name!r} uses {name!r} (template line {line}) but nothing "
                              f"defines it: it renders as an empty string", path=path,
                      data={"variable": name, "template_line": line})
    for name in sorted(set(used) - set(static)):
        yield finding("T002", f"template {template.meta.name!r} printed the undefined variable {name!r} as an empty "
                              f"string", path=path, data={"variable": name})


def check_generation_prompt(template: Template, *, path: str = "") -> Iterator[Finding]:
    """T007: the inference prompt for one user turn must be the training text up to the answer."""
    user = needle_messages(["user"])
    convo = needle_messages(["user", "assistant"])
    try:
        with_gp = template.render(user, add_generation_prompt=True)
        without = template.render(user)
        train = template.render(convo)
    except (TemplateRenderError, TemplateLoadError):
        return  # the row checks report why it fails
    at = train.find(needle(1))
    if at < 0:
        return  # dropped content: T004
    expected = train[:at]
    if with_gp == expected:
        return
    name = template.meta.name
    gp = with_gp[len(without):] if with_gp.startswith(without) else with_gp
    header = expected[len(without):] if expected.startswith(without) else expected
    data = {"generation_prompt": gp if with_gp != without else "", "training_header": header}
    if expected.startswith(with_gp) and expected[len(with_gp):] == " ":
        # one space before the answer: BPE and SentencePiece tokenizers attach it to the answer's first word,
        # which the model generates with its space, so training and inference agree in tokens
        yield finding("T007", f"template {name!r}: training puts a single space after the generation prompt; "
                              f"tokenizers usually attach it to the answer's first word", path=path,
                      severity=Severity.INFO, data=data)
    elif with_gp == without:
        yield finding("T007", f"template {name!r} ignores add_generation_prompt, but training writes {_show(header)} "
                              f"before the answer: at inference the model must produce that header itself",
                      path=path, data=data)
    else:
        agree = _agreeing_setting(template, user, expected)
        if agree:
            data["agrees_with"] = agree
        yield finding("T007", f"template {name!r}: the generation prompt {_show(gp)} is not the assistant header "
                              f"used in training {_show(header)}"
                      + (f"; with {agree} they agree" if agree else ""), path=path, data=data)


def _agreeing_setting(template: Template, user: list, expected: str) -> str:
    """A template argument (enable_thinking, reasoning_effort...) under which the generation prompt is the
    training header, when the template reads one ("" otherwise)."""
    import json

    from tmplcheck.validator.locate import _PROMPT_SETTINGS

    for key, value in _PROMPT_SETTINGS:
        if key not in template.source:
            continue
        try:
            if template.render(user, add_generation_prompt=True, **{key: value}) == expected:
                return f"{key}={json.dumps(value)}"
        except (TemplateRenderError, TemplateLoadError):
            continue
    return ""


# ------------------------------------------------------------------------------------------------ row-level
def check_special_token_values(template: Template, *, path: str = "") -> Iterator[Finding]:
    """T020: special-token variables the template reads without a value (undefined, as transformers renders them),
    or borrowed from a built-in family for a bare template file (an info)."""
    meta = template.meta
    for k in getattr(meta, "tokens_undefined", ()):
        yield finding("T020", f"template {meta.name!r} prints {k}, which its tokenizer config leaves null or "
                              "missing: it renders as an empty string (as transformers renders it)", path=path,
                      data={"variable": k, "borrowed": False})
    for k in getattr(meta, "tokens_borrowed", ()):
        v = meta.bos_token if k == "bos_token" else meta.eos_token
        yield finding("T020", f"template {meta.name!r} prints {k}; no tokenizer config was given, so {v!r} is "
                              "borrowed from the built-in family whose control tokens it writes", path=path,
                      severity=Severity.INFO, data={"variable": k, "borrowed": True})


def _at(conv: Conversation, pointer: str = "") -> dict:
    return {"path": conv.path, "line": conv.line, "pointer": pointer or conv.key}


def check_render_error(conv: Conversation, err: TemplateRenderError, template_name: str) -> Iterator[Finding]:
    """T003 (raises), T008 (sandbox refused), T009 (limits) for one row's failed render."""
    where = f" (template line {err.lineno})" if err.lineno else ""
    data = {"kind": err.kind, "template_line": err.lineno}
    if err.kind == "security":
        yield finding("T008", f"template {template_name!r} refused by the sandbox{where}: {err.message}",
                      data=data, **_at(conv))
    elif err.kind in ("timeout", "size"):
        yield finding("T009", f"template {template_name!r}: {err.message}", data=data, **_at(conv))
    else:
        what = "raised" if err.kind == "raise" else "failed"
        yield finding("T003", f"template {template_name!r} {what} for this row{where}: {err.message}", data=data,
                      **_at(conv))


def check_needles(conv: Conversation, probe: NeedleProbe, template_name: str) -> Iterator[Finding]:
    """T004 dropped and T005 repeated/moved content, from the needle probe of the row's role sequence."""
    if probe.text is None:
        return
    firsts: list[tuple[int, int]] = []
    for i, occ in enumerate(probe.occurrences):
        m = conv.messages[i]
        if not occ:
            yield finding("T004", f"template {template_name!r} drops the content of {m.role} message {i}: it does "
                                  f"not appear in the rendered text", **_at(conv, m.pointer))
            continue
        if len(occ) > 1:
            yield finding("T005", f"template {template_name!r} renders the content of {m.role} message {i} "
                                  f"{len(occ)} times", **_at(conv, m.pointer))
        firsts.append((occ[0], i))
    order = [i for _, i in sorted(firsts)]
    for i in _moved(order):
        m = conv.messages[i]
        yield finding("T005", f"template {template_name!r} moves {m.role} message {i}: it is rendered out of "
                              f"conversation order", severity=Severity.INFO, **_at(conv, m.pointer))


def _moved(order: list[int]) -> list[int]:
    """The message indices outside a longest increasing run of ``order`` (the ones the template moved)."""
    n = len(order)
    best = [1] * n
    prev = [-1] * n
    for j in range(n):
        for k in range(j):
            if order[k] < order[j] and best[k] + 1 > best[j]:
                best[j], prev[j] = best[k] + 1, k
    if not n:
        return []
    j = max(range(n), key=best.__getitem__)
    keep = set()
    while j >= 0:
        keep.add(order[j])
        j = prev[j]
    return sorted(set(order) - keep)


def check_end_of_turn(conv: Conversation, probe: NeedleProbe, template: Template,
                      structure: Structure | None) -> Iterator[Finding]:
    """T006: each assistant answer is followed by an end-of-turn string before the next message (or the end)."""
    if probe.text is None:
        return
    eots = tuple(template.meta.end_of_turn) or (structure.end_of_turn if structure and structure.ok else ())
    if not eots and not (structure and structure.ok):
        return  # nothing known and nothing inferable: no claim
    text = probe.text
    spans = [probe.span(i) for i in range(len(probe.roles))]
    for i, role in enumerate(probe.roles):
        if role != "assistant" or spans[i] is None:
            continue
        end = spans[i][1]  # type: ignore[index]
        nxt = min((s[0] for s in spans[i + 1:] if s is not None and s[0] >= end), default=len(text))
        gap = text[end:nxt]
        if eots and any(e in gap for e in eots):
            continue
        m = conv.messages[i]
        after = _show(gap) if gap else "nothing"
        want = " or ".join(map(repr, eots)) if eots else "an end-of-turn token"
        yield finding("T006", f"template {template.meta.name!r} does not close assistant message {i}: {after} "
                              f"follows its content, expected {want}", **_at(conv, m.pointer),
                      data={"after": gap})
        return  # one per row: the rest of the turns share the cause
