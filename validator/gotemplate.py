"""Ollama Modelfiles: parse one, and render its TEMPLATE (Go ``text/template`` syntax) the way Ollama does.

Only the subset Ollama's chat templates use is supported: text, ``{{ .Field }}`` / ``{{ $.Field }}`` /
``{{ $var.Field }}``, ``{{ if }}`` / ``{{ else if }}`` / ``{{ else }}`` / ``{{ end }}``, ``{{ range .Messages }}``
(also ``range $i, $m := ...``), ``{{ $x := ... }}``, trim markers ``{{-`` / ``-}}``, comments, string/number
literals and the functions ``eq ne and or not len slice index``. Anything else raises :class:`GoTemplateError`
(reported as G009 with its position), never a guess.

Ollama's rendering (``template.Execute``): a template that reads ``.Messages`` gets every message (system ones
included) at once; an older one (``.System``/``.Prompt``/``.Response``) is run once per user turn, with the system
prompt in the first and the answer in ``.Response``. For the turn being generated, everything after ``.Response``
is cut, so the prompt ends where the model's answer starts.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GoTemplateError", "Modelfile", "ModelfileError", "parse_modelfile", "GoTemplate", "render_ollama"]


class GoTemplateError(ValueError):
    def __init__(self, message: str, offset: int | None = None):
        super().__init__(message)
        self.offset = offset


class ModelfileError(ValueError):
    def __init__(self, message: str, line: int = 0):
        super().__init__(message)
        self.line = line


# ------------------------------------------------------------------------------------------------------ Modelfile
@dataclass
class Modelfile:
    from_: str | None = None
    from_line: int = 0
    template: str | None = None
    template_line: int = 0
    system: str | None = None
    stops: list[tuple[str, int]] = field(default_factory=list)      # (stop string, line)
    parameters: dict[str, list[str]] = field(default_factory=dict)


_INSTR = re.compile(r"^\s*([A-Za-z]+)\b\s*(.*)$", re.S)


def _value(rest: str, lines: list[str], i: int) -> tuple[str, int]:
    """A Modelfile argument at ``rest`` (line ``i``): a triple-quoted block (may span lines), a quoted string or
    the rest of the line. Returns (value, index of the line after it)."""
    s = rest.strip()
    if s.startswith('"""'):
        body = s[3:]
        end = body.find('"""')
        if end >= 0:
            return body[:end], i + 1
        parts = [body]
        j = i + 1
        while j < len(lines):
            k = lines[j].find('"""')
            if k >= 0:
                parts.append(lines[j][:k])
                return "\n".join(parts), j + 1
            parts.append(lines[j])
            j += 1
        raise ModelfileError('a """ block is never closed', i + 1)
    if s.startswith('"'):
        try:
            return shlex.split(s, posix=True)[0], i + 1
        except ValueError as e:
            raise ModelfileError(f"bad quoted string: {e}", i + 1) from None
    return s, i + 1


def parse_modelfile(text: str) -> Modelfile:
    """The instructions of an Ollama Modelfile; ``ModelfileError`` (with its line) for what cannot be read."""
    mf = Modelfile()
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        raw = lines[i]
        if not raw.strip() or raw.lstrip().startswith("#"):
            i += 1
            continue
        m = _INSTR.match(raw)
        if not m:
            raise ModelfileError(f"not an instruction: {raw.strip()[:60]!r}", i + 1)
        op, rest = m.group(1).upper(), m.group(2)
        line = i + 1
        if op == "PARAMETER":
            name, _, arg = rest.strip().partition(" ")
            val, i = _value(arg, lines, i)
            mf.parameters.setdefault(name.lower(), []).append(val)
            if name.lower() == "stop":
                mf.stops.append((val, line))
            continue
        val, i = _value(rest, lines, i)
        if op == "FROM":
            mf.from_, mf.from_line = val, line
        elif op == "TEMPLATE":
            mf.template, mf.template_line = val, line
        elif op == "SYSTEM":
            mf.system = val
        elif op in ("ADAPTER", "LICENSE", "MESSAGE", "REQUIRES"):
            pass
        else:
            raise ModelfileError(f"unknown instruction {op}", line)
    if mf.from_ is None:
        raise ModelfileError("no FROM instruction", 0)
    return mf


# ------------------------------------------------------------------------------------------------ Go templates
_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|`[^`]*`)|(?P<num>-?\d+)|(?P<lp>\()|(?P<rp>\))|'
                    r'(?P<assign>:=|=)|(?P<comma>,)|(?P<word>[$.\w][\w.$]*))')


@dataclass
class _Node:
    kind: str                       # text, expr, if, range, assign
    value: Any = None
    offset: int = 0
    branches: list[tuple[Any, list]] = field(default_factory=list)   # if: [(cond, body), ...], cond None = else
    body: list = field(default_factory=list)
    else_body: list = field(default_factory=list)
    names: tuple[str, ...] = ()


def _lex(expr: str, offset: int) -> list[tuple[str, str]]:
    out, pos = [], 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise GoTemplateError(f"cannot read {expr[pos:pos + 20]!r} in {{{{ {expr} }}}}", offset)
        pos = m.end()
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
    return out


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], offset: int):
        self.t, self.i, self.offset = tokens, 0, offset

    def done(self) -> bool:
        return self.i >= len(self.t)

    def pipeline(self) -> Any:
        args = []
        while not self.done() and self.t[self.i][0] not in ("rp",):
            args.append(self.operand())
        if not args:
            raise GoTemplateError("empty expression", self.offset)
        if len(args) == 1:
            return args[0]
        head = args[0]
        if head[0] != "func":
            raise GoTemplateError("only function calls take arguments", self.offset)
        return ("call", head[1], args[1:])

    def operand(self) -> Any:
        kind, val = self.t[self.i]
        self.i += 1
        if kind == "str":
            if val.startswith("`"):
                return ("lit", val[1:-1])
            return ("lit", bytes(val[1:-1], "utf-8").decode("unicode_escape"))
        if kind == "num":
            return ("lit", int(val))
        if kind == "lp":
            inner = self.pipeline()
            if self.done() or self.t[self.i][0] != "rp":
                raise GoTemplateError("unclosed parenthesis", self.offset)
            self.i += 1
            return inner
        if kind == "word":
            if val in ("true", "false"):
                return ("lit", val == "true")
            if val in _FUNCS:
                return ("func", val)
            if val.startswith(".") or val.startswith("$"):
                return ("path", val)
            raise GoTemplateError(f"unsupported function or name {val!r}", self.offset)
        raise GoTemplateError(f"unexpected {val!r}", self.offset)


def _truthy(v: Any) -> bool:
    return bool(v) if not isinstance(v, (int, float)) or isinstance(v, bool) else v != 0


def _slice(x: Any, *ix: int) -> Any:
    if len(ix) == 1:
        return x[ix[0]:]
    return x[ix[0]:ix[1]]


_FUNCS = {"eq": lambda a, *b: any(a == x for x in b), "ne": lambda a, b: a != b,
          "and": None, "or": None, "not": lambda a: not _truthy(a), "len": lambda a: len(a), "slice": _slice,
          "index": lambda x, *ix: _index(x, ix)}


def _index(x: Any, ix: tuple) -> Any:
    for k in ix:
        x = x[k]
    return x


class GoTemplate:
    """A parsed template; :meth:`execute` renders it with a data dict."""

    def __init__(self, source: str):
        self.source = source
        self.nodes = self._parse(source)
        self.uses_messages = ".Messages" in source
        self.has_response = bool(re.search(r"\.Response\b", source))

    # --------------------------------------------------------------------------------------------- parsing
    @staticmethod
    def _pieces(src: str) -> list[tuple[str, str, int]]:
        out: list[tuple[str, str, int]] = []
        pos = 0
        trim_next = False
        for m in _ACTION.finditer(src):
            text = src[pos:m.start()]
            if trim_next:
                text = text.lstrip(" \t\r\n")
            if m.group(1):
                text = text.rstrip(" \t\r\n")
            if text:
                out.append(("text", text, pos))
            body = m.group(2).strip()
            if not (body.startswith("/*") and body.endswith("*/")):
                out.append(("action", body, m.start()))
            trim_next = bool(m.group(3))
            pos = m.end()
        text = src[pos:]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if "{{" in text:
            raise GoTemplateError("an action is never closed with }}", pos + text.find("{{"))
        if text:
            out.append(("text", text, pos))
        return out

    def _parse(self, src: str) -> list:
        pieces = self._pieces(src)
        root: list = []
        stack: list[tuple[_Node, list]] = []     # (open node, the body being filled)
        cur = root
        for kind, val, off in pieces:
            if kind == "text":
                cur.append(_Node("text", val, off))
                continue
            word = val.split(None, 1)[0] if val.split() else ""
            rest = val[len(word):].strip()
            if word == "if":
                n = _Node("if", offset=off)
                body: list = []
                n.branches.append((self._expr(rest, off), body))
                cur.append(n)
                stack.append((n, cur))
                cur = body
            elif word == "range":
                n = _Node("range", offset=off)
                if ":=" in rest:
                    names, _, rest = rest.partition(":=")
                    n.names = tuple(x.strip() for x in names.split(","))
                n.value = self._expr(rest, off)
                cur.append(n)
                stack.append((n, cur))
                cur = n.body
            elif word == "else":
                if not stack:
                    raise GoTemplateError("{{ else }} outside if/range", off)
                n, parent = stack[-1]
                if n.kind == "if":
                    cond = None
                    if rest.startswith("if "):
                        cond = self._expr(rest[3:], off)
                    elif rest:
                        raise GoTemplateError(f"unsupported {{{{ else {rest} }}}}", off)
                    body = []
                    n.branches.append((cond, body))
                    cur = body
                else:
                    cur = n.else_body
            elif word == "end":
                if not stack:
                    raise GoTemplateError("{{ end }} without an open block", off)
                _, cur = stack.pop()
            elif word in ("with", "define", "template", "block", "break", "continue"):
                raise GoTemplateError(f"unsupported action {{{{ {word} }}}}", off)
            elif re.match(r"^\$\w*\s*:?=", val):
                name, _, expr = re.split(r"(:?=)", val, maxsplit=1)
                cur.append(_Node("assign", self._expr(expr, off), off, names=(name.strip(),)))
            else:
                cur.append(_Node("expr", self._expr(val, off), off))
        if stack:
            raise GoTemplateError("a block is never closed with {{ end }}", stack[-1][0].offset)
        return root

    @staticmethod
    def _expr(text: str, off: int) -> Any:
        p = _Parser(_lex(text, off), off)
        e = p.pipeline()
        if not p.done():
            raise GoTemplateError(f"cannot read {text!r}", off)
        return e

    # --------------------------------------------------------------------------------------------- executing
    def execute(self, data: dict[str, Any], *, cut_at_response: bool = False) -> str:
        out: list[str] = []
        self._cut = False
        self._run(self.nodes, data, {"$": data}, data, out, cut_at_response)
        return "".join(out)

    def _run(self, nodes: list, dot: Any, vars_: dict, root: Any, out: list, cut: bool) -> None:
        for n in nodes:
            if self._cut:
                return
            if n.kind == "text":
                out.append(n.value)
            elif n.kind == "expr":
                if cut and n.value in (("path", ".Response"), ("path", "$.Response")):
                    self._cut = True
                    return
                v = self._eval(n.value, dot, vars_, n.offset)
                out.append("" if v is None else str(v))
            elif n.kind == "assign":
                vars_[n.names[0]] = self._eval(n.value, dot, vars_, n.offset)
            elif n.kind == "if":
                for cond, body in n.branches:
                    if cond is None or _truthy(self._eval(cond, dot, vars_, n.offset)):
                        self._run(body, dot, vars_, root, out, cut)
                        break
            elif n.kind == "range":
                seq = self._eval(n.value, dot, vars_, n.offset) or []
                if not seq:
                    self._run(n.else_body, dot, vars_, root, out, cut)
                for i, item in enumerate(seq):
                    v = dict(vars_)
                    if len(n.names) == 2:
                        v[n.names[0]], v[n.names[1]] = i, item
                    elif len(n.names) == 1:
                        v[n.names[0]] = item
                    self._run(n.body, item, v, root, out, cut)
                    if self._cut:
                        return

    def _eval(self, e: Any, dot: Any, vars_: dict, off: int) -> Any:
        kind = e[0]
        if kind == "lit":
            return e[1]
        if kind == "path":
            p = e[1]
            if p.startswith("$"):
                name, _, rest = p.partition(".")
                if name not in vars_:
                    raise GoTemplateError(f"undefined variable {name}", off)
                base, parts = vars_[name], [x for x in rest.split(".") if x]
            else:
                base, parts = dot, [x for x in p.split(".") if x]
            for part in parts:
                if isinstance(base, dict):
                    base = base.get(part)
                else:
                    base = getattr(base, part, None)
            return base
        if kind == "func":
            raise GoTemplateError(f"function {e[1]} needs arguments", off)
        if kind == "call":
            name, args = e[1], e[2]
            if name == "and":
                v = None
                for a in args:
                    v = self._eval(a, dot, vars_, off)
                    if not _truthy(v):
                        return v
                return v
            if name == "or":
                v = None
                for a in args:
                    v = self._eval(a, dot, vars_, off)
                    if _truthy(v):
                        return v
                return v
            vals = [self._eval(a, dot, vars_, off) for a in args]
            try:
                return _FUNCS[name](*vals)
            except Exception as ex:  # noqa: BLE001 - a wrong call in the template, said where
                raise GoTemplateError(f"{name}: {ex}", off) from None
        raise GoTemplateError(f"cannot evaluate {e!r}", off)


def render_ollama(tmpl: GoTemplate, messages: list[dict], *, system: str | None = None) -> str:
    """The prompt Ollama sends for a chat ``messages`` (ending in a user turn) with this template.

    ``system``: the Modelfile's SYSTEM, used when the messages have no system message of their own."""
    msgs = [{"Role": m["role"], "Content": m.get("content") or ""} for m in messages]
    if system and not any(m["Role"] == "system" for m in msgs):
        msgs.insert(0, {"Role": "system", "Content": system})
    systems = [m["Content"] for m in msgs if m["Role"] == "system"]
    if tmpl.uses_messages:
        data = {"Messages": msgs, "System": "\n\n".join(systems), "Prompt": "", "Response": "", "Tools": None}
        return tmpl.execute(data, cut_at_response=tmpl.has_response)
    # one run per user turn: (system, prompt, response)
    groups: list[dict[str, str]] = []
    sys_text = ""
    for m in msgs:
        if m["Role"] == "system":
            sys_text = (sys_text + "\n\n" if sys_text else "") + m["Content"]
        elif m["Role"] == "user":
            groups.append({"System": sys_text, "Prompt": m["Content"], "Response": ""})
            sys_text = ""
        elif m["Role"] == "assistant":
            if not groups or groups[-1]["Response"]:
                groups.append({"System": sys_text, "Prompt": "", "Response": m["Content"]})
                sys_text = ""
            else:
                groups[-1]["Response"] = m["Content"]
    if sys_text or not groups:
        groups.append({"System": sys_text, "Prompt": "", "Response": ""})
    out = []
    for k, g in enumerate(groups):
        last = k == len(groups) - 1
        out.append(tmpl.execute({**g, "Messages": None}, cut_at_response=last and tmpl.has_response))
    return "".join(out)
