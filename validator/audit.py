"""Static security audit of a chat template: what its syntax tree and its text say, before and independent of any
render.

The sandboxed renderer refuses a payload only when a render reaches it. A payload behind a condition that the
dataset never meets (``{% if messages[0]['content'] == 'xyzzy' %}{{ cycler.__init__.__globals__.os.popen('id')
.read() }}{% endif %}``) renders nothing for every row and passes every render-based check, yet it runs on any server
that renders the template unsandboxed (llama-cpp-python before CVE-2024-34359) the moment a user types the trigger.
:func:`audit_source` reads the Jinja AST instead and reports:

- T010 ``python-internals-access``: an attribute or item named like a Python internal (``__globals__``, ``__class__``,
  ``mro``, ``__subclasses__``, ``f_globals``...), written plainly or assembled from strings that fold to one
  (``'__glo' ~ 'bals__'``, ``'{0}{0}class{0}{0}'.format('_')``, ``['__', 'class', '__']|join``, escapes such as
  ``'\\x5f\\x5f'``, values carried through ``set``, ``namespace`` attributes and loops over literals); also a string
  constant that holds a dunder name anywhere (``"{0.__class__}"`` for ``format``).
- T011 ``attr-filter``: ``|attr('name')`` with a harmless constant name (chat templates have no use for it).
- T012 ``computed-attribute-name``: an attribute or item name built from strings at render time that does not fold to
  a constant (concatenation, ``~``, ``format``, ``join``, ``replace``..., directly or through a variable).
- T013 ``sandbox-escape-gadget``: Jinja globals and Python names that exist only to escape (``cycler``, ``joiner``,
  ``lipsum``, ``self``, ``config``, ``request``, ``os``, ``subprocess``, ``__builtins__``, ``getattr``...), attributes
  such as ``popen``/``system``/``import_module``, and ``namespace`` used as anything but ``namespace(key=value)``.
- T014 ``content-triggered-branch``: a message content (or anything derived from one) compared with a string literal
  (``==``, ``!=``, ``in``, ``startswith``, ``selectattr('content', 'equalto', ...)``...). A search for template markup
  (``'<think>' in content``, ``startswith('<tool_response>')``, a separator) is how real templates parse reasoning and
  tool output, and the documented reasoning switches (``/no_think``...) are public; a plain word or sentence searched
  for, or any non-empty literal a whole content is compared with, is a trigger: content-dependent behaviour hidden in
  the template.
- T015 ``invisible-characters``: invisible and bidirectional-control code points in the template text (Unicode
  format characters, tags, variation selectors outside emoji, Hangul fillers): Trojan-Source style hiding, and text
  the reviewer cannot see that still reaches every prompt.
- T016 ``control-token-not-in-vocabulary`` (needs the tokenizer, :func:`audit_vocabulary`): a control-token-shaped
  string the template assembles at render time that the vocabulary does not hold as one token, and a look-alike of
  one of the vocabulary's own control tokens (strings written literally are K001's, from the template's metadata).
- T017 ``escaped-identifier-characters``: a string literal spelling ASCII letters, digits, ``_`` or ``.`` with
  ``\\x``/``\\u``/octal escapes (the lexer decodes them, a reader of the source does not).

Each issue carries its template line and, where the text allows it, the column. The analysis is flow-insensitive:
a variable's possible string values are every constant assigned to it anywhere; it never executes the template.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import nodes

from tmplcheck.validator.findings import Finding, finding

# ------------------------------------------------------------------------------------------------------ tables
#: attribute names that only matter for walking Python's object graph (without the dunder ones, caught by shape)
_INTERNAL_NAMES = frozenset({
    "mro", "func_globals", "func_code", "func_closure", "im_func", "im_self", "im_class",
    "f_globals", "f_locals", "f_builtins", "f_back", "f_code", "f_trace",
    "gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code", "cr_await", "ag_frame", "ag_code", "ag_await",
    "tb_frame", "tb_next", "co_code", "co_consts", "co_names",
    "_TemplateReference__context", "_module", "environment", "_environment", "parent", "obj",
})
# ``parent``/``obj``/``environment`` are the usual hops of ``self``/``caller``/``loop`` walks; an attribute with
# those names on plain data is harmless, so they count only on a gadget (see ``_GADGET_HOPS``)
_GADGET_HOPS = frozenset({"_TemplateReference__context", "_module", "environment", "_environment", "parent", "obj"})
_INTERNAL_ALWAYS = _INTERNAL_NAMES - _GADGET_HOPS
_DUNDER = re.compile(r"^__\w+__$")
_DUNDER_IN = re.compile(r"__[A-Za-z]\w*__")

#: names that no chat template needs and that every published Jinja sandbox escape starts from
_GADGET_NAMES = frozenset({
    "cycler", "joiner", "lipsum", "self", "config", "request", "url_for", "get_flashed_messages",
    "os", "sys", "subprocess", "builtins", "__builtins__", "__import__", "importlib", "eval", "exec", "compile",
    "getattr", "setattr", "globals", "locals", "open", "breakpoint", "pty", "socket", "popen",
})
#: attributes or items that are a step of a code-execution chain on whatever object they are read from
_GADGET_ATTRS = frozenset({
    "popen", "system", "spawn", "spawnl", "spawnv", "execl", "execv", "execve", "execvp", "fork", "forkpty", "kill",
    "subprocess", "Popen", "check_output", "check_call", "getoutput", "getstatusoutput", "run", "call",
    "os", "sys", "builtins", "import_module", "load_module", "exec_module", "eval", "exec", "compile",
    "getattr", "setattr", "delattr", "globals", "locals", "open", "remove", "unlink", "rmtree", "chmod",
    "environ", "modules", "_io", "loader", "spec", "linecache", "codecs",
})
# of those, ones that are also plain words a data dict may carry: a gadget only when read from a gadget chain
_GADGET_ATTRS_WEAK = frozenset({"run", "call", "open", "remove", "loader", "spec", "modules", "environ", "system"})

#: filters/methods that build a string from strings
_STRING_BUILDERS = frozenset({"format", "join", "replace", "reverse", "lower", "upper", "title", "capitalize",
                              "string", "trim", "strip", "lstrip", "rstrip", "center", "urlencode", "striptags",
                              "wordwrap", "truncate", "indent", "first", "last", "list", "map", "sum", "zfill",
                              "ljust", "rjust", "swapcase", "casefold", "removeprefix", "removesuffix", "translate",
                              "decode", "encode", "tojson", "safe", "escape", "e", "forceescape", "d", "default"})
#: filters that take an attribute name (as ``attribute=`` or their first argument)
_ATTRIBUTE_FILTERS = {"map": None, "selectattr": 0, "rejectattr": 0, "sort": None, "groupby": 0, "sum": None,
                      "unique": None, "min": None, "max": None, "dictsort": None}

#: content-comparison methods and tests
_COMPARE_METHODS = frozenset({"startswith", "endswith", "find", "rfind", "index", "rindex", "count",
                              "__contains__", "__eq__", "__ne__"})
_COMPARE_TESTS = frozenset({"eq", "equalto", "==", "ne", "!=", "sameas", "in"})
_MARKUP = re.compile(r"[<>\[\]{}|]")
_CONTENT_KEYS = frozenset({"content", "reasoning_content", "thinking", "reasoning"})
#: documented reasoning switches that upstream templates read from the system or user message (SmolLM3 and Nemotron
#: ``/think`` ``/no_think``, Ling and Nemotron ``detailed thinking on/off``): content-triggered by design, and public
KNOWN_SWITCHES = frozenset({"/think", "/no_think", "/nothink", "detailed thinking on", "detailed thinking off"})

#: ``\xNN``, ``\uNNNN``, ``\UNNNNNNNN``, octal escapes in a Jinja string literal
_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|[0-7]{1,3})")
_CONTROL_SHAPE = re.compile(r"<\|[^<>|\s]{1,48}\|>|<(?:s|/s|bos|eos|pad|unk|start_of_turn|end_of_turn)>"
                            r"|<[^<>\s]{1,40}>")


class _NoFold(Exception):
    pass


@dataclass(frozen=True)
class Issue:
    """One audit result: a T code, a message, where in the template."""

    code: str
    message: str
    line: int = 0
    column: int = 0
    data: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


# ----------------------------------------------------------------------------------------------- invisible text
def _invisible_kind(ch: str, prev: str, nxt: str) -> str | None:
    cp = ord(ch)
    if cp in (0x061C, 0x200E, 0x200F) or 0x202A <= cp <= 0x202E or 0x2066 <= cp <= 0x2069:
        return "bidirectional control"
    if 0xE0000 <= cp <= 0xE007F:
        return "tag character"
    if 0xE0100 <= cp <= 0xE01EF:
        return "variation selector"
    if 0xFE00 <= cp <= 0xFE0F:
        # after an emoji (or as a keycap) it picks the emoji's presentation: visible, and common in real text
        if prev and (ord(prev) >= 0x2000 and not prev.isalnum()) or nxt == "\u20e3":
            return None
        return "variation selector"
    if cp in (0x115F, 0x1160, 0x3164, 0xFFA0, 0x034F, 0x17B4, 0x17B5, 0x2800):
        return "invisible filler"
    if cp in (0x2028, 0x2029):
        return "line/paragraph separator"
    if unicodedata.category(ch) == "Cf":
        if cp == 0x200D and prev and ord(prev) >= 0x2000 and not prev.isalnum():
            return None   # a zero-width joiner inside an emoji sequence
        return "invisible format character"
    return None


def invisible_issues(source: str) -> list[Issue]:
    """T015: one issue per distinct invisible code point, at its first place, with the count."""
    first: dict[str, tuple[int, int, str]] = {}
    count: dict[str, int] = {}
    line, col = 1, 0
    prev = ""
    for i, ch in enumerate(source):
        col += 1
        if ch == "\n":
            line, col = line + 1, 0
        elif ord(ch) > 0x7F:
            kind = _invisible_kind(ch, prev, source[i + 1] if i + 1 < len(source) else "")
            if kind:
                first.setdefault(ch, (line, col, kind))
                count[ch] = count.get(ch, 0) + 1
        prev = ch
    out = []
    for ch, (ln, c, kind) in first.items():
        name = unicodedata.name(ch, "") or f"U+{ord(ch):04X}"
        n = count[ch]
        out.append(Issue("T015", f"the template text holds U+{ord(ch):04X} {name} ({kind}), invisible in an editor"
                                 + (f", {n} times" if n > 1 else ""),
                         ln, c, {"codepoint": f"U+{ord(ch):04X}", "count": n, "kind": kind}))
    return out


# ------------------------------------------------------------------------------------------------ the AST audit
def _walk(node: nodes.Node) -> Iterator[nodes.Node]:
    yield node
    for child in node.iter_child_nodes():
        yield from _walk(child)


def _const_str(n: nodes.Node) -> str | None:
    return n.value if isinstance(n, nodes.Const) and isinstance(n.value, str) else None


class _Audit:
    MESSAGES, MESSAGE, CONTENT, PART = "messages", "message", "content", "part"

    def __init__(self, tree: nodes.Template, source: str):
        self.tree = tree
        self.lines = source.splitlines()
        self.issues: list[Issue] = []
        self._seen: set[tuple] = set()
        stored = [n for n in _walk(tree) if isinstance(n, nodes.Name) and n.ctx in ("store", "param")]
        self.stored = {n.name for n in stored}
        for n in _walk(tree):
            if isinstance(n, nodes.Macro):
                self.stored.add(n.name)
                self.stored.update(a.name for a in n.args)
        # possible string values of variables (flow-insensitive), and variables holding strings built at render time
        self.values: dict[str, set[Any]] = {}
        self.exprs: dict[str, list[nodes.Node]] = {}   # variable -> every expression assigned to it
        self._blocks: dict[int, Any] = {}
        self._guarded: set[int] | None = None
        self._name_taint: dict[str, tuple[bool, bool, bool]] | None = None
        self.kinds: dict[str, str] = {"messages": self.MESSAGES}
        self.namespaces = {a.target.name for a in _walk(tree) if isinstance(a, nodes.Assign)
                           and isinstance(a.target, nodes.Name) and isinstance(a.node, nodes.Call)
                           and isinstance(a.node.node, nodes.Name) and a.node.node.name == "namespace"}
        self._bindings()

    # ---------------------------------------------------------------------------------------- locations
    def column(self, line: int, needle: str | None) -> int:
        if needle and 0 < line <= len(self.lines):
            k = self.lines[line - 1].find(needle)
            if k >= 0:
                return k + 1
        return 0

    def add(self, code: str, message: str, node: nodes.Node | None, needle: str | None = None, **data) -> None:
        line = getattr(node, "lineno", 0) or 0
        key = (code, line, message)
        if key in self._seen:
            return
        self._seen.add(key)
        self.issues.append(Issue(code, message, line, self.column(line, needle), data))

    # ------------------------------------------------------------------------------------ constant folding
    def fold(self, n: nodes.Node, depth: int = 0) -> Any:
        """The constant value of ``n`` (strings, numbers, lists and dicts of them), else :class:`_NoFold`."""
        if depth > 40:
            raise _NoFold
        d = depth + 1
        if isinstance(n, nodes.Const):
            return n.value
        if isinstance(n, nodes.TemplateData):
            return n.data
        if isinstance(n, (nodes.List, nodes.Tuple)):
            return [self.fold(x, d) for x in n.items]
        if isinstance(n, nodes.Dict):
            return {self.fold(p.key, d): self.fold(p.value, d) for p in n.items}
        if isinstance(n, nodes.Concat):
            return "".join(str(self.fold(x, d)) for x in n.nodes)
        if isinstance(n, nodes.Add):
            a, b = self.fold(n.left, d), self.fold(n.right, d)
            return self._apply(lambda: a + b)
        if isinstance(n, nodes.Mul):
            a, b = self.fold(n.left, d), self.fold(n.right, d)
            if (isinstance(a, str) and isinstance(b, int) and b <= 64) or (isinstance(b, str) and isinstance(a, int)
                                                                            and a <= 64):
                return a * b
            raise _NoFold
        if isinstance(n, nodes.Mod):
            a, b = self.fold(n.left, d), self.fold(n.right, d)
            if isinstance(a, str):
                return self._apply(lambda: a % (tuple(b) if isinstance(b, list) else b))
            raise _NoFold
        if isinstance(n, nodes.Getitem):
            base = self.fold(n.node, d)
            if isinstance(n.arg, nodes.Slice):
                s = n.arg
                parts = [None if x is None else self.fold(x, d) for x in (s.start, s.stop, s.step)]
                return self._apply(lambda: base[slice(*parts)])
            key = self.fold(n.arg, d)
            return self._apply(lambda: base[key])
        if isinstance(n, nodes.Filter) and n.node is not None:
            return self.fold_filter(n.name, self.fold(n.node, d), [self.fold(a, d) for a in n.args],
                                    {kw.key: self.fold(kw.value, d) for kw in n.kwargs})
        if isinstance(n, nodes.Call):
            if n.dyn_args is not None or n.dyn_kwargs is not None:
                raise _NoFold
            if isinstance(n.node, nodes.Name) and n.node.name == "dict" and not n.args:
                return {kw.key: self.fold(kw.value, d) for kw in n.kwargs}
            if isinstance(n.node, nodes.Getattr):
                base = self.fold(n.node.node, d)
                if isinstance(base, str) and n.node.attr in _STR_METHODS:
                    args = [self.fold(a, d) for a in n.args]
                    kwargs = {kw.key: self.fold(kw.value, d) for kw in n.kwargs}
                    return self._apply(lambda: getattr(base, n.node.attr)(*args, **kwargs))
            raise _NoFold
        if isinstance(n, nodes.Neg):
            v = self.fold(n.node, d)
            return self._apply(lambda: -v)
        if isinstance(n, nodes.Pos):
            return self.fold(n.node, d)
        if isinstance(n, nodes.Name) and n.ctx == "load":
            vals = self.values.get(n.name)
            if vals is not None and len(vals) == 1 and len(self.exprs.get(n.name, ())) <= 1:
                return next(iter(vals))
        if isinstance(n, nodes.Getattr) and isinstance(n.node, nodes.Name) and n.node.name in self.namespaces:
            vals = self.values.get(f"{n.node.name}.{n.attr}")
            if vals is not None and len(vals) == 1:
                return next(iter(vals))
        raise _NoFold

    @staticmethod
    def _apply(fn):
        try:
            v = fn()
        except Exception:  # noqa: BLE001 - what Jinja would raise at render time: not a constant
            raise _NoFold from None
        if isinstance(v, str) and len(v) > 10_000:
            raise _NoFold
        return v

    def fold_filter(self, name: str, v: Any, args: list, kwargs: dict) -> Any:
        if isinstance(v, dict) and name in ("list", "first", "last", "join", "sort", "reverse", "unique"):
            v = list(v)
        if name in ("join",):
            sep = args[0] if args else kwargs.get("d", "")
            return self._apply(lambda: str(sep).join(str(x) for x in v))
        if name == "format":
            return self._apply(lambda: v % (tuple(args) if args else kwargs))
        if name in ("string",):
            return self._apply(lambda: str(v))
        if name in ("list",):
            return self._apply(lambda: list(v))
        if name in ("first", "last"):
            return self._apply(lambda: (v[0] if name == "first" else v[-1]))
        if name == "reverse":
            return self._apply(lambda: v[::-1] if isinstance(v, (str, list)) else _raise())
        if name in ("lower", "upper", "title", "capitalize", "trim"):
            meth = {"trim": "strip"}.get(name, name)
            return self._apply(lambda: getattr(v, meth)(*args))
        if name == "replace":
            return self._apply(lambda: v.replace(*args))
        if name == "map" and not args and "attribute" not in kwargs:
            raise _NoFold
        if name in ("safe", "e", "escape", "forceescape"):
            return v
        if name in ("d", "default"):
            return v
        raise _NoFold

    def values_of(self, n: nodes.Node) -> list[Any] | None:
        """Every constant value ``n`` may have (several for a variable assigned in several places), else None."""
        try:
            return [self.fold(n)]
        except _NoFold:
            pass
        if isinstance(n, nodes.Name) and n.name in self.values:
            return list(self.values[n.name])
        if isinstance(n, nodes.Getattr) and isinstance(n.node, nodes.Name) and n.node.name in self.namespaces:
            vals = self.values.get(f"{n.node.name}.{n.attr}")
            return list(vals) if vals else None
        if isinstance(n, nodes.CondExpr):
            a = self.values_of(n.expr1)
            b = self.values_of(n.expr2) if n.expr2 is not None else [""]
            return (a or []) + (b or []) or None
        return None

    def name_taints(self) -> dict[str, tuple[bool, bool, bool]]:
        """Every variable's taint, to a fixed point over the expressions assigned to it (monotone: each round sets a
        flag or ends, so a chain of variables built from each other costs rounds, never an exponential walk)."""
        if self._name_taint is None:
            self._name_taint = taints = {k: (False, False, False) for k in self.exprs}
            for _ in range(3 * len(taints) + 2):
                changed = False
                for k, exprs in self.exprs.items():
                    acc = taints[k]
                    for e in exprs:
                        acc = tuple(a or b for a, b in zip(acc, self.taint(e)))
                    if acc != taints[k]:
                        taints[k] = acc
                        changed = True
                if not changed:
                    break
        return self._name_taint

    def taint(self, n: nodes.Node) -> tuple[bool, bool, bool]:
        """``(built, underscore, content)`` of a value: whether it is a string built from strings at render time,
        whether a string constant that goes into it holds ``_``, and whether a message content goes into it (through
        variables, namespace attributes and loops, flow-insensitively)."""
        if self.kind(n) == self.CONTENT:
            return True, False, True
        if isinstance(n, nodes.Const):
            return False, isinstance(n.value, str) and "_" in n.value, False
        if isinstance(n, nodes.TemplateData):
            return False, "_" in n.data, False
        key = None
        if isinstance(n, nodes.Name) and n.ctx == "load":
            key = n.name
        elif isinstance(n, nodes.Getattr) and isinstance(n.node, nodes.Name) and n.node.name in self.namespaces:
            key = f"{n.node.name}.{n.attr}"
        if key is not None:
            return self.name_taints().get(key, (False, False, False))
        kids = list(n.iter_child_nodes())
        b = u = c = False
        for k in kids:
            b2, u2, c2 = self.taint(k)
            b, u, c = b or b2, u or u2, c or c2
        if isinstance(n, (nodes.Concat, nodes.Mod)):
            return True, u, c
        if isinstance(n, nodes.Add):
            strs = _const_str(n.left) is not None or _const_str(n.right) is not None
            return strs or b, u, c
        if isinstance(n, nodes.Filter):
            return n.name in _STRING_BUILDERS or b, u, c
        if isinstance(n, nodes.Call):
            if isinstance(n.node, nodes.Getattr) and n.node.attr in _STR_METHODS:
                return True, u, c
            return False, False, False
        if isinstance(n, (nodes.Getitem, nodes.Getattr, nodes.CondExpr, nodes.And, nodes.Or, nodes.List,
                          nodes.Tuple)):
            return b, u, c
        return False, False, False

    # ----------------------------------------------------------------------------------------- bindings
    def _bind(self, key: str, value: nodes.Node) -> bool:
        changed = False
        vals = self.values_of(value)
        if vals is not None:
            have = self.values.setdefault(key, set())
            for v in vals:
                try:
                    if v not in have:
                        have.add(v)
                        changed = True
                except TypeError:   # an unhashable list/dict value: keep its string form
                    if str(v) not in have:
                        have.add(str(v))
                        changed = True
        exprs = self.exprs.setdefault(key, [])
        if not any(e is value for e in exprs):
            exprs.append(value)
        k = self.kind(value)
        if k and self.kinds.get(key) != k and key != "messages":
            self.kinds[key] = k
            changed = True
        return changed

    def _bindings(self) -> None:
        for _ in range(8):
            changed = False
            for n in _walk(self.tree):
                if isinstance(n, nodes.Assign):
                    for key, val in self._targets(n.target, n.node):
                        changed |= self._bind(key, val)
                elif isinstance(n, nodes.AssignBlock):
                    body = self._blocks.get(id(n), False)
                    if body is False:
                        body = self._blocks[id(n)] = nodes.Concat(
                            [o for s in n.body if isinstance(s, nodes.Output) for o in s.nodes]) \
                            if all(isinstance(s, nodes.Output) for s in n.body) else None
                    for key, _ in self._targets(n.target, None):
                        if body is not None:
                            changed |= self._bind(key, body)
                elif isinstance(n, nodes.For):
                    changed |= self._loop(n)
                elif isinstance(n, nodes.With):
                    for t, v in zip(n.targets, n.values):
                        for key, val in self._targets(t, v):
                            changed |= self._bind(key, val)
            if not changed:
                return

    @staticmethod
    def _targets(t: nodes.Node, v: nodes.Node | None) -> list[tuple[str, nodes.Node]]:
        if isinstance(t, nodes.Name):
            return [(t.name, v)] if v is not None else [(t.name, nodes.Const(None))]
        if isinstance(t, nodes.NSRef):
            return [(f"{t.name}.{t.attr}", v)] if v is not None else [(f"{t.name}.{t.attr}", nodes.Const(None))]
        if isinstance(t, nodes.Tuple) and isinstance(v, (nodes.Tuple, nodes.List)) and len(v.items) == len(t.items):
            return [kv for a, b in zip(t.items, v.items) for kv in _Audit._targets(a, b)]
        return []

    def _loop(self, n: nodes.For) -> bool:
        changed = False
        if not isinstance(n.target, nodes.Name):
            return False
        name = n.target.name
        kind = self.kind(n.iter)
        if kind == self.MESSAGES and self.kinds.get(name) != self.MESSAGE:
            self.kinds[name] = self.MESSAGE
            changed = True
        if kind == self.CONTENT and self.kinds.get(name) != self.PART:
            self.kinds[name] = self.PART        # an element of a content: a typed part ({type, text}) or a piece
            changed = True
        try:
            items = self.fold(n.iter)
        except _NoFold:
            items = None
        if isinstance(items, (list, str)) and len(items) <= 256:
            have = self.values.setdefault(name, set())
            for v in items:
                if isinstance(v, (str, int, float)) and v not in have:
                    have.add(v)
                    changed = True
        exprs = self.exprs.setdefault(name, [])
        if not any(e is n.iter for e in exprs):
            exprs.append(n.iter)
        return changed

    # ------------------------------------------------------------------------------------------ kinds
    def kind(self, n: nodes.Node | None) -> str | None:  # noqa: C901 - one case per node type
        """``messages`` / ``message`` / ``content`` (a message's content or anything derived from it) / None."""
        if n is None:
            return None
        if isinstance(n, nodes.Name):
            return self.kinds.get(n.name)
        if isinstance(n, (nodes.Getattr, nodes.Getitem)):
            if isinstance(n.node, nodes.Name) and n.node.name == "loop" and isinstance(n, nodes.Getattr) \
                    and n.attr in ("previtem", "nextitem"):
                return self.MESSAGE
            if isinstance(n, nodes.Getattr) and isinstance(n.node, nodes.Name) and n.node.name in self.namespaces:
                return self.kinds.get(f"{n.node.name}.{n.attr}")
            base = self.kind(n.node)
            key = n.attr if isinstance(n, nodes.Getattr) else _const_str(n.arg)
            if base == self.MESSAGES:
                if isinstance(n, nodes.Getitem):
                    return self.MESSAGES if isinstance(n.arg, nodes.Slice) else self.MESSAGE
                return None
            if base == self.MESSAGE:
                return self.CONTENT if key in _CONTENT_KEYS else None
            if base == self.CONTENT:
                if isinstance(n, nodes.Getitem) and not isinstance(n.arg, nodes.Slice) and key is None:
                    return self.PART            # content[0]: a typed part, or one piece of a split content
                if isinstance(key, str) and key not in _CONTENT_KEYS and key != "text" and key not in _STR_METHODS:
                    return None                 # a typed content's fields: type, image_url...
                return self.CONTENT
            if base == self.PART:
                if key in _CONTENT_KEYS or key == "text" or (isinstance(key, str) and key in _STR_METHODS):
                    return self.CONTENT
                return None
            return None
        if isinstance(n, nodes.Filter):
            base = self.kind(n.node) if n.node is not None else None
            if base == self.MESSAGES:
                if n.name in ("first", "last", "random"):
                    return self.MESSAGE
                if n.name in ("list", "reverse", "selectattr", "rejectattr", "sort", "batch", "slice", "unique"):
                    return self.MESSAGES
                if n.name == "map" and any(kw.key == "attribute" and _const_str(kw.value) in _CONTENT_KEYS
                                           for kw in n.kwargs):
                    return self.CONTENT
                return None
            if base == self.CONTENT:
                return None if n.name in ("length", "count", "wordcount") else self.CONTENT
            return None
        if isinstance(n, nodes.Call):
            f = n.node
            if isinstance(f, nodes.Getattr):
                base = self.kind(f.node)
                if base == self.MESSAGE and f.attr == "get" and n.args and _const_str(n.args[0]) in _CONTENT_KEYS:
                    return self.CONTENT
                if base == self.CONTENT and f.attr not in _COMPARE_METHODS:
                    return self.CONTENT
                if base == self.PART and f.attr in _STR_METHODS and f.attr not in _COMPARE_METHODS:
                    return self.CONTENT
            return None
        if isinstance(n, (nodes.Add, nodes.Concat)):
            parts = [n.left, n.right] if isinstance(n, nodes.Add) else n.nodes
            return self.CONTENT if any(self.kind(p) == self.CONTENT for p in parts) else None
        if isinstance(n, (nodes.And, nodes.Or)):
            return self.kind(n.left) or self.kind(n.right)
        if isinstance(n, nodes.CondExpr):
            return self.kind(n.expr1) or self.kind(n.expr2)
        return None

    # ------------------------------------------------------------------------------------------ checks
    def name_check(self, what: str, value: Any, node: nodes.Node, needle: str | None, *, via: str,
                   chain_gadget: bool) -> bool:
        """Report an attribute/item name; True when it was reported."""
        if not isinstance(value, str):
            return False
        shown = f"{value!r}" + (f" (spelled {via})" if via else "")
        if _DUNDER.match(value) or value in _INTERNAL_ALWAYS or (chain_gadget and value in _GADGET_HOPS):
            self.add("T010", f"the template reads the Python internal {what} {shown}: the first step of a "
                             "sandbox escape", node, needle, name=value)
            return True
        if value in _GADGET_ATTRS and (chain_gadget or value not in _GADGET_ATTRS_WEAK):
            self.add("T013", f"the template reads the {what} {shown}, a step of a code-execution chain", node,
                     needle, name=value)
            return True
        return False

    def on_gadget_chain(self, n: nodes.Node) -> bool:
        """Whether ``n`` is read from a gadget global or from an internal attribute somewhere below it."""
        while isinstance(n, (nodes.Getattr, nodes.Getitem, nodes.Call, nodes.Filter)):
            if isinstance(n, nodes.Getattr) and (_DUNDER.match(n.attr) or n.attr in _INTERNAL_NAMES):
                return True
            if isinstance(n, nodes.Getitem):
                s = _const_str(n.arg)
                if s and (_DUNDER.match(s) or s in _INTERNAL_NAMES):
                    return True
            n = n.node
        return isinstance(n, nodes.Name) and n.ctx == "load" and n.name in _GADGET_NAMES and n.name not in self.stored

    def run(self) -> list[Issue]:
        for n in _walk(self.tree):
            if isinstance(n, nodes.Getattr):
                chain = self.on_gadget_chain(n.node)
                self.name_check("attribute", n.attr, n, "." + n.attr, via="", chain_gadget=chain)
                if isinstance(n.node, nodes.Name) and n.node.name == "namespace" and "namespace" not in self.stored:
                    self.add("T013", f"namespace.{n.attr}: the namespace class is read as an object, not called "
                                     "with key=value pairs", n, "namespace")
            elif isinstance(n, nodes.NSRef):
                self.name_check("namespace attribute", n.attr, n, "." + n.attr, via="", chain_gadget=False)
            elif isinstance(n, nodes.Getitem) and not isinstance(n.arg, nodes.Slice):
                self.key_check(n, n.arg, "item", chain=self.on_gadget_chain(n.node))
            elif isinstance(n, nodes.Filter):
                self.filter_check(n)
            elif isinstance(n, nodes.Name) and n.ctx == "load":
                if n.name in _GADGET_NAMES and n.name not in self.stored:
                    self.add("T013", f"the template uses {n.name!r}, a global no chat template needs and the usual "
                                     "start of a sandbox escape", n, n.name, name=n.name)
            elif isinstance(n, nodes.Call):
                self.call_check(n)
            elif isinstance(n, nodes.Const) and isinstance(n.value, str):
                m = _DUNDER_IN.search(n.value)
                if m:
                    self.add("T010", f"a string constant holds the Python internal name {m.group()!r} "
                                     "(format strings and attribute names built from it reach Python internals)",
                             n, m.group(), name=m.group())
            elif isinstance(n, nodes.Compare):
                self.compare_check(n)
            elif isinstance(n, nodes.Test):
                self.test_check(n)
        return self.issues

    def key_check(self, node: nodes.Node, key: nodes.Node, what: str, *, chain: bool = False,
                  attr_filter: bool = False) -> None:
        vals = self.values_of(key)
        via = "" if isinstance(key, nodes.Const) else "by an expression that folds to it"
        if vals is not None:
            reported = False
            for v in vals:
                reported |= self.name_check(what, v, node, v if not via else None, via=via, chain_gadget=chain)
            if attr_filter and not reported:
                shown = ", ".join(repr(v) for v in vals[:3])
                self.add("T011", f"|attr({shown}): chat templates have no use for attribute lookups by name; it "
                                 "is how sandbox-escape payloads reach attributes the syntax would show", node, "attr")
            return
        built, underscore, content = self.taint(key)
        if content or (built and (underscore or chain)):
            self.add("T012", f"an {what} name built from strings at render time (not a constant the audit can "
                             "read): the way payloads hide Python internals from a reader", node,
                     "attr" if attr_filter else None)
        elif attr_filter:
            self.add("T012", "|attr() with a name computed at render time", node, "attr")

    def filter_check(self, n: nodes.Filter) -> None:
        if n.name == "attr":
            if n.args:
                self.key_check(n, n.args[0], "attribute", chain=True, attr_filter=True)
            else:
                self.add("T011", "|attr without a name", n, "attr")
            return
        if n.name in _ATTRIBUTE_FILTERS:
            keys = [kw.value for kw in n.kwargs if kw.key == "attribute"]
            pos = _ATTRIBUTE_FILTERS[n.name]
            if pos is not None and len(n.args) > pos:
                keys.append(n.args[pos])
            for k in keys:
                vals = self.values_of(k)
                for v in vals or []:
                    if isinstance(v, str):
                        for part in v.split("."):
                            self.name_check(f"attribute (through |{n.name})", part, n, part, via="",
                                            chain_gadget=False)
                if vals is None and self.taint(k)[0]:
                    self.add("T012", f"|{n.name} with an attribute name built at render time", n, n.name)
        if n.name in ("selectattr", "rejectattr") and n.node is not None and self.kind(n.node) == self.MESSAGES \
                and len(n.args) >= 3 and _const_str(n.args[0]) in _CONTENT_KEYS and _const_str(n.args[1]) in \
                _COMPARE_TESTS:
            self.literal_check(n.args[2], n, f"|{n.name}('content', {_const_str(n.args[1])!r}, ...)")

    def call_check(self, n: nodes.Call) -> None:
        f = n.node
        if isinstance(f, nodes.Name) and f.name == "namespace" and "namespace" not in self.stored:
            if n.args or n.dyn_args is not None or n.dyn_kwargs is not None:
                self.add("T013", "namespace() called with positional or ** arguments (an object or a mapping "
                                 "smuggled into a namespace), not key=value pairs", n, "namespace")
            for kw in n.kwargs:
                if _DUNDER.match(kw.key):
                    self.add("T010", f"namespace({kw.key}=...): a Python internal name as a namespace attribute",
                             n, kw.key, name=kw.key)
        if isinstance(f, nodes.Name) and f.name == "dict" and "dict" not in self.stored:
            for kw in n.kwargs:
                if _DUNDER.match(kw.key):
                    self.add("T010", f"dict({kw.key}=...): a Python internal name built as a dict key (|first or "
                                     "|join turns it into an attribute name)", n, kw.key, name=kw.key)
        if isinstance(f, nodes.Getattr) and f.attr in _COMPARE_METHODS and self.kind(f.node) == self.CONTENT:
            for a in n.args[:1]:
                self.literal_check(a, n, f".{f.attr}()")

    # ------------------------------------------------------------------------------- content triggers
    def literal_check(self, lit: nodes.Node, node: nodes.Node, how: str) -> None:
        try:
            v = self.fold(lit)
        except _NoFold:
            return
        # a whole content equal to a literal is a trigger whatever the literal looks like; a search for markup
        # (<think>, [TOOL_CALLS], |) or punctuation inside a content is how templates parse reasoning and tool output
        exact = how in ("==",) or how.startswith("is ") or "'equalto'" in how or "'eq'" in how or "'=='" in how \
            or "'sameas'" in how
        for s in (v if isinstance(v, list) else [v]):
            if not isinstance(s, str) or not s.strip():
                continue   # empty: a test for an empty content
            if not exact and (_MARKUP.search(s) or not any(c.isalnum() for c in s)):
                continue
            if s.strip().lower() in KNOWN_SWITCHES:
                continue
            shown = s if len(s) <= 60 else s[:57] + "..."
            self.add("T014", f"a message content is compared with the literal {shown!r} ({how}): the template "
                             "behaves differently when a user types that text", node, s[:20], literal=s)

    def _mapping_guarded(self) -> set[int]:
        """Compares that sit in an ``and`` next to an ``X is mapping`` test: ``'text' in X`` there is a key test on a
        dict-shaped content (Apertus), not a search in text."""
        out: set[int] = set()
        for a in _walk(self.tree):
            if isinstance(a, nodes.And):
                ops: list[nodes.Node] = []
                stack = [a]
                while stack:
                    x = stack.pop()
                    if isinstance(x, nodes.And):
                        stack.extend((x.left, x.right))
                    else:
                        ops.append(x)
                if any(isinstance(o, nodes.Test) and o.name == "mapping" for o in ops):
                    out.update(id(o) for o in ops if isinstance(o, nodes.Compare))
        return out

    def compare_check(self, n: nodes.Compare) -> None:
        if self._guarded is None:
            self._guarded = self._mapping_guarded()
        if id(n) in self._guarded:
            return
        left = n.expr
        for op in n.ops:
            right = op.expr
            if op.op in ("eq", "ne", "in", "notin"):
                lk, rk = self.kind(left), self.kind(right)
                if lk == self.CONTENT and rk != self.CONTENT:
                    self.literal_check(right, n, "==" if op.op in ("eq", "ne") else "in")
                elif rk == self.CONTENT and lk != self.CONTENT:
                    self.literal_check(left, n, "==" if op.op in ("eq", "ne") else "in")
            left = right

    def test_check(self, n: nodes.Test) -> None:
        if n.name in _COMPARE_TESTS and self.kind(n.node) == self.CONTENT and n.args:
            self.literal_check(n.args[0], n, f"is {n.name}")


def _raise():
    raise ValueError


_STR_METHODS = frozenset(name for name in dir(str) if not name.startswith("_")) | {"__add__", "__mod__",
                                                                                   "__mul__", "__getitem__"}


def _escape_issues(env: jinja2.Environment, source: str) -> list[Issue]:
    """T017: string literals that spell plain ASCII identifier characters with escapes."""
    out: list[Issue] = []
    try:
        tokens = list(env.lex(source))
    except jinja2.TemplateSyntaxError:
        return out
    lines = source.splitlines()
    for lineno, kind, value in tokens:
        if kind != "string":
            continue
        hidden = []
        for m in _ESCAPE.finditer(value):
            if m.start() > 0 and value[m.start() - 1] == "\\":
                continue
            esc = m.group(1)
            cp = int(esc[1:], 16) if esc[0] in "xuU" else int(esc, 8)
            ch = chr(cp) if cp < 0x110000 else ""
            if ch and (ch.isascii() and (ch.isalnum() or ch in "_.")):
                hidden.append(ch)
        if hidden:
            col = 0
            if 0 < lineno <= len(lines):
                k = lines[lineno - 1].find(value[:12])
                col = k + 1 if k >= 0 else 0
            out.append(Issue("T017", f"the string literal {value[:40]!r} spells {''.join(hidden)!r} with escapes",
                             lineno, col, {"decoded": "".join(hidden)}))
    return out


@lru_cache(maxsize=128)
def audit_source(source: str) -> tuple[Issue, ...]:
    """Every static issue of a template source (T010-T015, T017), sorted by line. A template that does not parse
    gives its invisible-character issues only (T001 reports the syntax error)."""
    from tmplcheck.validator.render import make_environment

    env = make_environment()
    issues = invisible_issues(source)
    try:
        tree = env.parse(source)
    except jinja2.TemplateSyntaxError:
        return tuple(sorted(issues, key=lambda i: (i.line, i.column, i.code)))
    try:
        issues.extend(_Audit(tree, source).run())
    except RecursionError:
        issues.append(Issue("T012", "the template is nested too deeply for the audit to read", 0))
    issues.extend(_escape_issues(env, source))
    return tuple(sorted(issues, key=lambda i: (i.line, i.column, i.code)))


# ------------------------------------------------------------------------------------------------- vocabulary
def written_strings(source: str) -> list[tuple[str, int]]:
    """Strings the template writes or builds, with their lines: text between tags, string constants, and every
    concatenation of constants that folds (``'<|' ~ 'eot_id' ~ '|>'``)."""
    from tmplcheck.validator.render import make_environment

    try:
        tree = make_environment().parse(source)
    except jinja2.TemplateSyntaxError:
        return []
    a = _Audit(tree, source)
    out: list[tuple[str, int]] = []

    def operands(n: nodes.Node) -> list[nodes.Node]:
        if isinstance(n, nodes.Add):
            return operands(n.left) + operands(n.right)
        if isinstance(n, nodes.Concat):
            return [x for c in n.nodes for x in operands(c)]
        return [n]

    done: set[int] = set()
    for n in _walk(tree):
        if isinstance(n, nodes.TemplateData):
            out.append((n.data, n.lineno))
        elif isinstance(n, nodes.Const) and isinstance(n.value, str):
            out.append((n.value, n.lineno))
        elif isinstance(n, (nodes.Concat, nodes.Add)) and id(n) not in done:
            # the runs of constant operands of a concatenation chain, joined ('<|eot_' ~ 'id|>' with holes around)
            run: list[str] = []
            for x in operands(n) + [None]:
                try:
                    v = a.fold(x) if x is not None else None
                except _NoFold:
                    v = None
                if isinstance(v, str):
                    run.append(v)
                    continue
                if len(run) > 1:
                    out.append(("".join(run), n.lineno))
                run = []
            for x in _walk(n):
                if isinstance(x, (nodes.Concat, nodes.Add)):
                    done.add(id(x))
        elif isinstance(n, (nodes.Filter, nodes.Call)):
            try:
                v = a.fold(n)
            except _NoFold:
                continue
            if isinstance(v, str):
                out.append((v, n.lineno))
    return out


def _skeleton(s: str) -> str:
    """A control token's shape for look-alike matching: NFKC, case-folded, confusable bars and dashes unified."""
    s = unicodedata.normalize("NFKC", s).casefold()
    return s.translate(_CONFUSABLE)


_CONFUSABLE = str.maketrans({"\uff5c": "|", "\u2502": "|", "\u01c0": "|", "\u2223": "|", "\u00a6": "|",
                             "\u2039": "<", "\u203a": ">", "\u2010": "-", "\u2011": "-", "\u2013": "-",
                             "\u0456": "i", "\u0430": "a", "\u0435": "e", "\u043e": "o", "\u0440": "p",
                             "\u0441": "c", "\u0445": "x", "\u0455": "s", "\u0458": "j", "\u0501": "d"})


def audit_vocabulary(template, tokenizer, *, covered: Iterable[str] = ()) -> list[Issue]:
    """T016: control-token-shaped strings the template writes that the tokenizer does not hold as one token: those
    assembled at render time (not written literally in the source, and not in ``covered``, the strings K001 checks),
    and look-alikes wherever they come from. A string whose look-alike skeleton (NFKC, case-folded, confusable letters
    and bars unified) equals one of the vocabulary's special tokens is named as a look-alike of it."""
    covered = set(covered)
    specials: dict[str, str] = {}
    for i in getattr(tokenizer, "special_ids", ()) or ():
        tok = tokenizer.id_to_token(i)
        if tok:
            specials.setdefault(_skeleton(tok), tok)
    out: list[Issue] = []
    seen: set[str] = set()
    for text, line in written_strings(template.source):
        for m in _CONTROL_SHAPE.finditer(text):
            s = m.group()
            if s in seen:
                continue
            seen.add(s)
            if tokenizer.token_to_id(s) is not None:
                continue
            twin = specials.get(_skeleton(s))
            if (s in covered or s in template.source) and (twin is None or twin == s):
                continue   # written literally: K001's business (from the template's metadata), not the audit's
            if twin is not None and twin != s:
                out.append(Issue("T016", f"the template writes {s!r}, a look-alike of the vocabulary's control "
                                         f"token {twin!r} that the tokenizer splits into ordinary tokens", line,
                                 0, {"string": s, "lookalike_of": twin}))
            elif s.startswith("<|") or s in ("<s>", "</s>", "<bos>", "<eos>"):
                out.append(Issue("T016", f"the template writes the control-token string {s!r}, which is not in "
                                         "this tokenizer's vocabulary (it is built at render time, so K001 does not "
                                         "see it in the template's metadata)", line, 0, {"string": s}))
    return out


# --------------------------------------------------------------------------------------------------- findings
def _location(template, path: str) -> str:
    origin = getattr(template.meta, "origin", "") or ""
    if origin and not origin.startswith(("hub:", "builtin")) and Path(origin).is_file():
        return origin
    return path or origin or template.meta.name


def to_findings(issues: Iterable[Issue], template, *, path: str = "") -> list[Finding]:
    """Findings for the gate: located in the template file (its origin) at the template line and column, so that
    SARIF and the GitHub annotations point into the template; ``data`` keeps ``template_line``."""
    where = _location(template, path)
    out = []
    for i in issues:
        loc = f" (template {template.meta.name!r} line {i.line}" + (f", column {i.column}" if i.column else "") + ")"
        out.append(finding(i.code, i.message + loc, path=where, line=i.line, column=i.column,
                           data={"template_line": i.line, "template": template.meta.name, **i.data}))
    return out


def audit_template(template, *, path: str = "", tokenizer=None) -> list[Finding]:
    """The audit's findings for a loaded :class:`~tmplcheck.templates.Template` (its training variant too when it
    has a separate one); with a tokenizer, T016 as well."""
    issues = list(audit_source(template.source))
    train = getattr(template, "training_source", None)
    if train and train != template.source:
        have = {(i.code, i.message) for i in issues}
        issues.extend(i for i in audit_source(train) if (i.code, i.message) not in have)
    if tokenizer is not None:
        try:
            from tmplcheck.validator.token_pipeline import template_control_strings

            covered = template_control_strings(template)
        except Exception:  # noqa: BLE001 - the token stage's helper is an optimisation of the message only
            covered = []
        issues.extend(audit_vocabulary(template, tokenizer, covered=covered))
    return to_findings(issues, template, path=path)


def summary_line(issues: Iterable[Issue]) -> str:
    """``"T010 line 3, T013 line 3"``: a compact note for a loaded template's metadata."""
    return ", ".join(f"{i.code} line {i.line}" for i in issues)
