"""``tmplcheck verify-model``: does the shipped model speak the template it was trained on?

Checks a GGUF, a model folder or an Ollama Modelfile against the validated template and its tokenizer (G codes,
``validator/codes/serving.py``), and renders the approved rows the way llama.cpp's built-in format (no ``--jinja``)
would for this model (X codes, ``validator/crosscheck.py``). Small pure functions over metadata that was already
read; no torch, no model weights.

BOS at inference, per route (how many BOS tokens start the served prompt):

* llama.cpp's built-in formats (llama-server without --jinja, ``llama_chat_apply_template``): the built-in's text
  (no BOS, but for a few that hard-code one) + 1 when the GGUF's ``add_bos_token`` is true;
* llama-server --jinja: the template's render, a leading BOS stripped when ``add_bos_token`` is true and then added
  by the tokenizer (so at least one with add_bos);
* llama-cpp-python's ``create_chat_completion``: the template's render tokenized with add_bos=False;
* Ollama: the Modelfile TEMPLATE's render + 1 when ``add_bos_token`` is true.

Training's count is the BOS tokens at the start of the validated template's render (training tokenizes the render
alone, ``apply_chat_template(tokenize=True)``).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tmplcheck.validator import crossdiff as cd
from tmplcheck.validator.findings import Finding, finding

#: token texts llama.cpp puts in its end-of-generation set by name, whatever the GGUF's keys say (llama-vocab.cpp)
LLAMA_CPP_EOG_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~["})

GGUF_TEMPLATE = "tokenizer.chat_template"
GGUF_EOS, GGUF_EOT, GGUF_EOM = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                                "tokenizer.ggml.eom_token_id")
GGUF_BOS, GGUF_ADD_BOS = "tokenizer.ggml.bos_token_id", "tokenizer.ggml.add_bos_token"

#: conversations every check renders besides the approved rows (and the only ones when no dataset is given)
PROBES: tuple[tuple[dict, ...], ...] = (
    ({"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."},
     {"role": "assistant", "content": "Blue."}),
    ({"role": "user", "content": "Hello there."}, {"role": "assistant", "content": "Hi."}),
    ({"role": "system", "content": "Answer in French."}, {"role": "user", "content": "One?"},
     {"role": "assistant", "content": "Un."}, {"role": "user", "content": "Two?"},
     {"role": "assistant", "content": "Deux."}),
)


# ------------------------------------------------------------------------------------------------ what to expect
@dataclass
class Expected:
    """The validated side: the template the data was approved and trained with, its tokenizer, the rows."""

    template: Any                                   # tmplcheck.templates.Template
    tokenizer: Any = None                           # tmplcheck.validator.tokenizer.Tokenizer, or None
    rows: list[Any] = field(default_factory=list)   # ingest Conversations of the approved dataset
    origin: str = ""                                # where the expectation came from (run dir, flags)

    @property
    def end_of_turn(self) -> dict[str, int | None]:
        """Each end-of-turn string of the template → its single id in the tokenizer (None without one)."""
        out: dict[str, int | None] = {}
        for s in self.template.meta.end_of_turn:
            out[s] = self.tokenizer.token_to_id(s) if self.tokenizer is not None else None
        return out

    @property
    def bos_text(self) -> str | None:
        return self.template.meta.bos_token or (getattr(self.tokenizer, "bos_token", None) if self.tokenizer
                                                else None)

    def conversations(self) -> list[tuple[str, int, list[dict], dict]]:
        """(path, line, messages, template arguments) for the probes and the approved rows."""
        out = [("<probe>", i + 1, [dict(m) for m in p], {}) for i, p in enumerate(PROBES)
               if self.template.meta.system_role or all(m["role"] != "system" for m in p)]
        for c in self.rows:
            out.append((c.path, c.line, c.dicts(), c.render_kw()))
        return out

    def training_bos(self) -> int:
        """BOS tokens at the start of a training render (the render alone, as training tokenizes it)."""
        return leading_bos(self.template.render(list(PROBES[1])), self.bos_text)


def leading_bos(text: str, bos: str | None) -> int:
    n = 0
    if not bos:
        return 0
    while text.startswith(bos, n * len(bos)):
        n += 1
    return n


def strip_bos(text: str, bos: str | None) -> str:
    return text[len(bos):] if bos and text.startswith(bos) else text


def prompt_of(messages: list[dict]) -> list[dict] | None:
    """The messages before the last assistant turn (what a server is sent to generate that turn)."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    p = messages if last is None else messages[:last]
    return p or None


def embedded(expected: Expected, source: str) -> Any:
    """A template object for ``source`` with the validated template's special tokens (how servers fill
    bos_token/eos_token from the model's own vocabulary)."""
    from tmplcheck.templates import Template

    return Template(replace(expected.template.meta, name="embedded", llama_cpp=None, builtin=False), source)


def served_as(expected: Expected, served_source: str) -> Any:
    """The validated template whose text, for llama.cpp's detection, is ``served_source``: check_cross then
    compares the training render with what llama.cpp's built-in format for that text makes of the row."""
    from tmplcheck.templates import Template

    v = expected.template
    t = Template(replace(v.meta, llama_cpp=None), v.source, training_source=v.training_source,
                 variables=v.variables, now=v.now)
    t._renderer = v.renderer
    t.source = served_source
    return t


# ------------------------------------------------------------------------------------------------------- checks
def check_template_present(source: str | None, *, path: str, pointer: str) -> Iterator[Finding]:
    if not source:
        yield finding("G001", "no chat template: llama.cpp falls back to ChatML, llama-cpp-python to its 'llama-2' "
                              "format, Ollama to the raw prompt; the model is served a format it never saw",
                      path=path, pointer=pointer, hint="export with `tmplcheck export RUN_DIR`")


def _first_line_diff(a: str, b: str) -> str:
    al, bl = a.splitlines(), b.splitlines()
    for i, (x, y) in enumerate(zip(al, bl)):
        if x != y:
            return f"line {i + 1}: validated '{cd.visible(x)[:90]}', embedded '{cd.visible(y)[:90]}'"
    if len(al) != len(bl):
        i = min(len(al), len(bl))
        extra = (bl if len(bl) > len(al) else al)[i]
        who = "embedded" if len(bl) > len(al) else "validated"
        return f"line {i + 1}: only the {who} template has '{cd.visible(extra)[:90]}'"
    return "the texts differ in line endings or trailing whitespace"


def check_template_equal(expected: Expected, source: str, *, path: str, pointer: str) -> Iterator[Finding]:
    """G002: the embedded template is the validated text; else where the texts differ and how many approved rows
    (and probes) render differently with it, with the first difference."""
    valid = expected.template.source
    if source == valid:
        return
    emb = embedded(expected, source)
    differ, first, errors = 0, None, 0
    convs = expected.conversations()
    for cpath, line, msgs, kw in convs:
        p = prompt_of(msgs)
        if p is None:
            continue
        try:
            a = expected.template.render(p, add_generation_prompt=True, **kw)
        except Exception:  # noqa: BLE001 - the gate reported the validated template's own failures
            continue
        try:
            b = emb.render(p, add_generation_prompt=True, **kw)
        except Exception as e:  # noqa: BLE001 - the embedded template fails where the validated one renders
            errors += 1
            differ += 1
            first = first or f"{cpath}:{line}: the embedded template fails: {type(e).__name__}: {e}"
            continue
        if a != b:
            differ += 1
            if first is None:
                ops = cd.diff_ops(a, b)
                o = ops[0] if ops else None
                where = (f"at {o.a0}: validated '{cd.visible(a[o.a0:o.a1])[:60]}', embedded "
                         f"'{cd.visible(b[o.b0:o.b1])[:60]}'") if o else ""
                first = f"{cpath}:{line}: {where}"
    rows = f"{differ} of {len(convs)} prompts render differently" + (f"; first {first}" if first else "")
    yield finding("G002", f"the embedded chat template is not the validated one ({_first_line_diff(valid, source)}); "
                          f"{rows}", path=path, pointer=pointer,
                  hint="re-export with `tmplcheck export`, or put the validated template back",
                  data={"differing_prompts": differ, "prompts": len(convs), "render_errors": errors})


def check_stop_ids(expected: Expected, stops: dict[str, int | None], *, path: str, vocab: Sequence[str] | None
                   = None) -> Iterator[Finding]:
    """G003: every end-of-turn id of the template is one of the declared stop ids (``stops``: key → id)."""
    declared = {v for v in stops.values() if isinstance(v, int)}
    for s, i in expected.end_of_turn.items():
        if i is None:
            continue
        if vocab is not None and 0 <= i < len(vocab) and vocab[i] != s:
            yield finding("G003", f"id {i} is {vocab[i]!r} in this model's vocabulary, not the end-of-turn {s!r} "
                                  "of the validated tokenizer: model and tokenizer do not belong together",
                          path=path, pointer="tokenizer.ggml.tokens")
            continue
        if i in declared:
            continue
        said = ", ".join(f"{k.rsplit('.', 1)[-1]} = {v}" for k, v in stops.items() if v is not None) or "none"
        by_name = (f"; llama.cpp itself still stops on it by name ({s} is on its list), other runtimes do not"
                   if s in LLAMA_CPP_EOG_TEXTS else "; llama.cpp does not stop on it either")
        yield finding("G003", f"the end-of-turn {s!r} ({i}) is not a declared stop id ({said}){by_name}",
                      path=path, pointer=next(iter(stops), ""),
                      hint=f"set eos/eot to {i} (`tmplcheck export` does)",
                      data={"end_of_turn": s, "id": i, "declared": sorted(declared)})


def bos_routes(expected: Expected, *, add_bos: bool, source: str | None, builtin_text: str | None,
               modelfile_text: str | None = None) -> dict[str, int]:
    """BOS tokens each serving route puts at the start of the prompt (see the module's docstring)."""
    bos = expected.bos_text
    out: dict[str, int] = {}
    if builtin_text is not None:
        out["llama.cpp built-in format (no --jinja)"] = leading_bos(builtin_text, bos) + int(add_bos)
    if source:
        n = leading_bos(embedded(expected, source).render(list(PROBES[1])[:1], add_generation_prompt=True), bos)
        out["llama-server --jinja"] = max(n, 1) if add_bos else n
        py = python_format_prompt(source)
        # llama-cpp-python: the GGUF's template through Jinja2ChatFormatter, tokenized with add_bos=False; a
        # template equal to one of its Python formats' constants is served by that format, tokenized with add_bos
        out["llama-cpp-python create_chat_completion"] = n if py is None else leading_bos(py, bos) + int(add_bos)
    if modelfile_text is not None:
        out["Ollama (Modelfile TEMPLATE)"] = leading_bos(modelfile_text, bos) + int(add_bos)
    return out


def python_format_prompt(source: str) -> str | None:
    """The prompt llama-cpp-python's Python chat format makes of a one-message chat when it replaces the GGUF's
    template with one (``guess_chat_format_from_gguf_metadata``: the template equals its constant); None otherwise
    (or without llama-cpp-python)."""
    try:
        from llama_cpp import llama_chat_format as F
    except ImportError:
        return None
    name = F.guess_chat_format_from_gguf_metadata({GGUF_TEMPLATE: source})
    fmt = {"llama-3": getattr(F, "format_llama3", None), "chatml": getattr(F, "format_chatml", None),
           "mistral-instruct": getattr(F, "format_mistral_instruct", None)}.get(name or "")
    if fmt is None:
        return None
    return fmt(messages=list(PROBES[1])[:1]).prompt


def check_bos(expected: Expected, routes: dict[str, int], *, path: str, pointer: str, add_bos: bool) \
        -> Iterator[Finding]:
    train = expected.training_bos()
    for route, n in routes.items():
        if n > train:
            yield finding("G004", f"{route}: the prompt starts with {n} BOS token(s), training's rows with {train} "
                                  f"(add_bos_token = {str(add_bos).lower()})", path=path, pointer=pointer,
                          hint="leave BOS to one side: the template or the tokenizer, as in training",
                          data={"route": route, "inference": n, "training": train})
        elif n < train:
            yield finding("G005", f"{route}: the prompt starts with {n} BOS token(s), training's rows with {train} "
                                  f"(add_bos_token = {str(add_bos).lower()})", path=path, pointer=pointer,
                          hint="export with add_bos_token true (`tmplcheck export`)",
                          data={"route": route, "inference": n, "training": train})


def builtin_render(expected: Expected, source: str | None) -> str | None:
    """What llama.cpp's built-in format for this template text (ChatML without one) makes of a probe's prompt."""
    from tmplcheck.validator.llamacpp import LlamaCppRenderer, detect

    fmt = detect(source) if source else "chatml"
    if fmt is None:
        return None
    try:
        return LlamaCppRenderer(fmt).render(list(PROBES[1])[:1], add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - a format that cannot render is X010's business
        return None


def check_builtin_route(expected: Expected, source: str | None) -> Iterator[Finding]:
    """X findings: the approved rows (and probes) as llama.cpp's built-in format for this model renders them,
    against the training render (what llama-server without --jinja sends)."""
    from tmplcheck.validator.crosscheck import ShapeCrossCheck

    served = served_as(expected, source or "chatml")
    cross = ShapeCrossCheck()
    for cpath, line, msgs, kw in expected.conversations():
        conv = _Conv(cpath, line, msgs, kw)
        try:
            text = expected.template.render(msgs, **kw)
        except Exception:  # noqa: BLE001 - the gate reports rows the validated template cannot render
            continue
        yield from cross(conv, served, text, render_kw=kw or None)


@dataclass
class _Msg:
    role: str
    content: Any
    pointer: str = ""
    fields: dict = field(default_factory=dict)
    reasoning: Any = None

    def as_dict(self) -> dict:
        return {"role": self.role, "content": self.content}


class _Conv:
    """A conversation as check_cross reads it (path, line, messages with pointers, dicts(), render_kw())."""

    plain = True

    def __init__(self, path: str, line: int, msgs: list[dict], kw: dict):
        self.path, self.line, self._kw = path, line, kw
        self._dicts = msgs
        self.messages = [_Msg(m.get("role", ""), m.get("content"), f"/messages/{i}") for i, m in enumerate(msgs)]
        self.plain = not kw and all(set(m) <= {"role", "content"} for m in msgs)

    def dicts(self) -> list[dict]:
        return [dict(m) for m in self._dicts]

    def render_kw(self) -> dict:
        return dict(self._kw)


# -------------------------------------------------------------------------------------------------- Modelfiles
def check_modelfile(expected: Expected, text: str, *, path: str, add_bos: bool | None) -> Iterator[Finding]:
    """G006-G009 (and G004/G005 for the Ollama route) for a Modelfile's text."""
    from tmplcheck.validator.gotemplate import GoTemplate, GoTemplateError, ModelfileError, parse_modelfile, \
        render_ollama

    try:
        mf = parse_modelfile(text)
    except ModelfileError as e:
        yield finding("G009", f"cannot read the Modelfile: {e}", path=path, line=e.line)
        return
    eot = list(expected.template.meta.end_of_turn)
    have = {s for s, _ in mf.stops}
    for s in eot:
        if s not in have:
            yield finding("G007", f"no PARAMETER stop {json.dumps(s)}: the template ends assistant turns with it"
                                  + (f" (stops here: {', '.join(json.dumps(x) for x in sorted(have))})" if have
                                     else " (no stop at all)"), path=path, line=mf.from_line,
                          hint=f"add: PARAMETER stop {json.dumps(s)}")
    src = mf.template
    bare = (src or "").replace(" ", "").replace("-", "").strip()
    if src is None or bare in ("{{.Prompt}}", "{{.Prompt}}{{.Response}}"):
        yield finding("G006", "TEMPLATE is " + ("missing (Ollama then uses the FROM model's or {{ .Prompt }})"
                                                if src is None else f"{src.strip()!r}")
                      + ": the user's text is sent without the chat format", path=path, line=mf.template_line,
                      hint="use the Modelfile `tmplcheck export` writes")
        return
    try:
        tmpl = GoTemplate(src)
    except GoTemplateError as e:
        yield finding("G009", f"cannot parse TEMPLATE: {e}", path=path, line=mf.template_line)
        return
    bos = expected.bos_text
    first_diff, differ, total, first_text = None, 0, 0, None
    for cpath, line, msgs, kw in expected.conversations():
        p = prompt_of(msgs)
        if p is None or kw:
            continue
        total += 1
        try:
            want = strip_bos(expected.template.render(p, add_generation_prompt=True), bos)
        except Exception:  # noqa: BLE001 - the gate reports rows the validated template cannot render
            continue
        try:
            got = render_ollama(tmpl, p, system=mf.system)
        except GoTemplateError as e:
            yield finding("G009", f"TEMPLATE fails on {cpath}:{line}: {e}", path=path, line=mf.template_line)
            return
        first_text = first_text if first_text is not None else got
        got_cmp = strip_bos(got, bos)
        if got_cmp != want:
            differ += 1
            if first_diff is None:
                ops = cd.diff_ops(want, got_cmp)
                o = ops[0] if ops else None
                first_diff = (f"{cpath}:{line} at {o.a0}: training '{cd.visible(want[o.a0:o.a1])[:60]}', "
                              f"Ollama '{cd.visible(got_cmp[o.b0:o.b1])[:60]}'") if o else f"{cpath}:{line}"
    controls = [s for s in expected.template.meta.special_tokens if s != bos]
    if first_text is not None and controls and not any(s in first_text for s in controls):
        yield finding("G006", "TEMPLATE writes none of the template's control tokens "
                              f"({', '.join(controls[:4])}): the prompt has no chat format", path=path,
                      line=mf.template_line, hint="use the Modelfile `tmplcheck export` writes")
    elif differ:
        yield finding("G008", f"{differ} of {total} prompts render differently from training; first {first_diff}",
                      path=path, line=mf.template_line, hint="use the Modelfile `tmplcheck export` writes",
                      data={"differing_prompts": differ, "prompts": total})
    if first_text is not None and add_bos is not None:
        routes = {"Ollama (Modelfile TEMPLATE)": leading_bos(first_text, bos) + int(add_bos)}
        yield from check_bos(expected, routes, path=path, pointer="TEMPLATE", add_bos=add_bos)


# -------------------------------------------------------------------------------------------------- entry points
@dataclass
class ModelMeta:
    """What a served model declares, read from a GGUF or a model folder."""

    kind: str                                  # "gguf" | "folder"
    path: str
    template: str | None
    template_pointer: str
    stops: dict[str, int | None]               # key → id
    add_bos: bool
    add_bos_known: bool = True
    vocab: list[str] | None = None


def gguf_meta(fields: dict[str, Any], path: str) -> ModelMeta:
    add = fields.get(GGUF_ADD_BOS)
    pre = fields.get("tokenizer.ggml.pre")
    model = fields.get("tokenizer.ggml.model")
    known = isinstance(add, bool)
    if not known:   # llama.cpp's default for the vocabulary (llama-vocab.cpp): SPM and Llama 3's BPE add BOS
        add = model in ("llama", "gemma4") or pre in ("llama3", "llama-v3", "llama-bpe", "falcon3")
    toks = fields.get("tokenizer.ggml.tokens")
    return ModelMeta("gguf", path, fields.get(GGUF_TEMPLATE), GGUF_TEMPLATE,
                     {k: fields.get(k) for k in (GGUF_EOS, GGUF_EOT, GGUF_EOM)}, bool(add), known,
                     toks if isinstance(toks, list) else None)


def folder_meta(folder: Path, tokenizer_loader=None) -> ModelMeta:
    """A transformers model folder: template in tokenizer_config.json or chat_template.jinja, stops in
    generation_config.json (else config.json), BOS from its tokenizer's post-processor."""
    tc_path = folder / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text(encoding="utf-8")) if tc_path.is_file() else {}
    tmpl = tc.get("chat_template") if isinstance(tc.get("chat_template"), str) else None
    pointer = "tokenizer_config.json#/chat_template"
    if tmpl is None and (folder / "chat_template.jinja").is_file():
        tmpl, pointer = (folder / "chat_template.jinja").read_text(encoding="utf-8"), "chat_template.jinja"
    stops: dict[str, int | None] = {}
    for name in ("generation_config.json", "config.json"):
        p = folder / name
        if p.is_file():
            ids = json.loads(p.read_text(encoding="utf-8")).get("eos_token_id")
            ids = [ids] if isinstance(ids, int) else (ids or [])
            for k, i in enumerate(x for x in ids if isinstance(x, int)):
                stops[f"{name}#/eos_token_id/{k}"] = i
            if stops:
                break
    add_bos, known = False, False
    if tokenizer_loader is not None:
        try:
            tok = tokenizer_loader(str(folder))
            add_bos, known = bool(getattr(tok, "adds_bos", False)), True
        except Exception:  # noqa: BLE001 - said by the caller (G009 when nothing can be read)
            pass
    return ModelMeta("folder", str(folder), tmpl, pointer, stops, add_bos, known)


def check_model(expected: Expected, meta: ModelMeta, *, modelfile_text: str | None = None) -> list[Finding]:
    """Every G/X finding for one model (GGUF or folder)."""
    out: list[Finding] = []
    out += check_template_present(meta.template, path=meta.path, pointer=meta.template_pointer)
    if meta.template:
        out += check_template_equal(expected, meta.template, path=meta.path, pointer=meta.template_pointer)
    out += check_stop_ids(expected, meta.stops, path=meta.path, vocab=meta.vocab)
    routes = bos_routes(expected, add_bos=meta.add_bos, source=meta.template,
                        builtin_text=builtin_render(expected, meta.template))
    out += check_bos(expected, routes, path=meta.path, pointer=GGUF_ADD_BOS if meta.kind == "gguf" else
                     "tokenizer.json#/post_processor", add_bos=meta.add_bos)
    out += check_builtin_route(expected, meta.template)
    return out


def fold_per_file(findings: Iterable[Finding]) -> list[Finding]:
    """One finding per per-file code (``Rule.per_file``, e.g. X001: a property of the template pair, not of a row),
    counting the rows (approved rows and probes) it applies to."""
    from tmplcheck.validator.codes import RULES

    out: list[Finding] = []
    first: dict[tuple[str, str], int] = {}
    for f in findings:
        rule = RULES.get(f.code)
        if rule is None or not rule.per_file:
            out.append(f)
            continue
        k = (f.code, f.severity.value)
        if k in first:
            g = out[first[k]]
            out[first[k]] = replace(g, data={**(g.data or {}), "rows": (g.data or {}).get("rows", 1) + 1})
            continue
        first[k] = len(out)
        out.append(replace(f, data={**(f.data or {}), "rows": 1}))
    return out


def summarize(findings: Iterable[Finding], checked: list[str], expected: Expected) -> dict[str, Any]:
    """The gate's summary shape (the reporters read it), with verify-model's headline."""
    fs = list(findings)
    by: dict[str, int] = {}
    for f in fs:
        by[f.code] = by.get(f.code, 0) + 1
    sev = {k: sum(f.severity.value == k for f in fs) for k in ("error", "warning", "info")}
    probes = len(expected.conversations()) - len(expected.rows)
    head = (f"{', '.join(checked)} against the template {expected.template.meta.name}"
            + (f" ({expected.origin})" if expected.origin else "")
            + f"; {len(expected.rows)} approved row(s) and {probes} probe conversations rendered")
    return {"rows": len(expected.rows) + probes, "errors": sev["error"], "warnings": sev["warning"],
            "infos": sev["info"],
            "rows_with_errors": len({(f.path, f.line) for f in fs if f.severity.value == "error" and f.line}),
            "by_code": dict(sorted(by.items())),
            "per_file_rows": {f.code: (f.data or {})["rows"] for f in fs if (f.data or {}).get("rows")},
            "checked": checked, "template": expected.template.meta.name,
            "verify_model": {"headline": head}}


def unified_template_diff(a: str, b: str, n: int = 2) -> str:
    return "".join(difflib.unified_diff(a.splitlines(True), b.splitlines(True), "validated", "embedded", n=n))
