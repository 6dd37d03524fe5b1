"""Content-opaque templates: proving that a template never looks inside a message's content, and rendering such a
template's rows without running it.

Most chat templates only paste each message's content between headers: ``'<|start_header_id|>' + message['role']
+ '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>'``. What they write then depends on the
conversation's *shape* (its roles, how many messages, which contents are empty) and not on the contents, so the render
of a row is the render of its shape with sentinel contents (``validator/skeleton.py``) with the row's contents put in
place of the sentinels. :func:`analyse` proves that from the template's syntax tree, and :class:`FillRenderer`
renders a row that way: once per shape through the real renderer, then one string join per row.

The proof (a flow-insensitive taint analysis over the Jinja AST, iterated to a fixed point) tracks four kinds of
value: *messages* lists and single *message* objects, *content* (a string holding some message's content) and
everything else (*clean*: roles, ``loop``, the template's variables, constants). A content value may only be

- written to the output, concatenated with ``+``/``~`` (the result is content), passed through ``trim`` or
  ``string``, stored in a variable or on a ``namespace``, chosen by ``if``/``else``/``or``/``and``; a value built from
  itself and content (accumulation across loop iterations) grows its count of content references at every round of
  the fixed point and is refused;
- tested for truthiness (the fill only runs for rows whose contents are all non-empty, as the sentinels are) or
  with a type test (``is string``, ``is defined``, ...: the same answer for any string).

A message object may be indexed with a constant key (``'content'`` gives content, ``'role'`` and any other key a
clean value: the gate's messages hold ``role`` and ``content`` only; of its methods only ``.get(key)``), or tested
for a key (``'tool_calls' in message``). A messages list may be iterated, indexed, sliced, measured (``length``), filtered by
role (``selectattr('role', ...)``), mapped to its roles, reversed, and its first/last taken. Anything else — a
comparison, ``in``, slicing or a method of content, another filter on it (``tojson``, ``length``, ``replace``...),
passing content or a message to a call or macro, ``include``/``import``, ``caller`` — and the template is not
opaque: every row is rendered as before.

Two things still depend on the contents' lengths, and :class:`FillRenderer` checks them per row: the output-size
limit (the filled text's length) and the intermediate-value bound (the shape render's largest checked value plus
``copies`` times the longest content, ``copies`` being the most content references one value can hold by the
proof). ``trim`` is exact only on contents without edge whitespace; a template that trims contents is filled only
for such rows. ``tests/test_opaque.py`` proves the fill equal to the render on generated conversations for every
built-in and every upstream template of the llama.cpp sdist that the analysis accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import nodes

from tmplcheck.validator.render import Rendering, make_environment
from tmplcheck.validator.skeleton import fill, has_sentinel_chars, places, sentinel_messages

CLEAN, CONTENT, MESSAGE, MESSAGES = "clean", "content", "message", "messages"

#: tests whose answer is the same for every non-empty string (and for a sentinel)
_TYPE_TESTS = frozenset({"defined", "undefined", "none", "string", "mapping", "number", "sequence", "iterable",
                         "boolean", "integer", "float", "callable", "true", "false"})
#: filters a content value may pass through: identity on strings (``trim`` on strings without edge whitespace)
_CONTENT_FILTERS = frozenset({"trim", "string"})
_MAX_COPIES = 16
_DICT_METHODS = frozenset(name for name in dir(dict) if not name.startswith("_"))


class NotOpaque(Exception):
    def __init__(self, reason: str, node: nodes.Node | None = None):
        line = getattr(node, "lineno", None)
        super().__init__(f"{reason} (template line {line})" if line else reason)


@dataclass(frozen=True)
class Opacity:
    """The analysis' answer for one template source."""

    opaque: bool
    reason: str = ""      # why not, with the template line
    trims: bool = False   # some content passes through ``trim``
    copies: int = 1       # the most content references any one value holds


@dataclass(frozen=True)
class _K:
    """A value's kind and, for content, how many content references it holds."""

    kind: str
    copies: int = 0


_CLEAN = _K(CLEAN)


def _join(a: _K, b: _K, node: nodes.Node) -> _K:
    if a.kind == b.kind:
        return _K(a.kind, max(a.copies, b.copies))
    if a.kind == CLEAN:
        return b
    if b.kind == CLEAN:
        return a
    raise NotOpaque(f"a value is either {a.kind} or {b.kind}", node)


class _Analysis:
    def __init__(self, tree: nodes.Template):
        self.tree = tree
        self.names: dict[str, _K] = {"messages": _K(MESSAGES)}   # variable (or "ns.attr") -> kind, flow-insensitive
        # names bound to a namespace(): used only as ``ns.attr`` / ``ns['attr']`` (tracked per attribute), never as
        # a value (an alias would hide what its attributes hold)
        self.namespaces = {a.target.name for a in tree.find_all(nodes.Assign)
                           if isinstance(a.target, nodes.Name) and isinstance(a.node, nodes.Call)
                           and isinstance(a.node.node, nodes.Name) and a.node.node.name == "namespace"}
        self.macros: dict[str, _K] = {}                          # macro name -> kind of what it writes
        self.changed = False
        self.trims = False
        self.copies = 1

    # ------------------------------------------------------------------------------------------- bindings
    def bind(self, name: str, k: _K, node: nodes.Node) -> None:
        old = self.names.get(name, _CLEAN)
        new = _join(old, k, node)
        if new.copies > _MAX_COPIES:
            raise NotOpaque(f"{name!r} accumulates content", node)
        if new != old:
            self.names[name] = new
            self.changed = True

    def run(self) -> Opacity:
        for _ in range(64):
            self.changed = False
            self.stmts(self.tree.body)
            if not self.changed:
                return Opacity(True, trims=self.trims, copies=self.copies)
        raise NotOpaque("no fixed point")

    # --------------------------------------------------------------------------------------------- statements
    def stmts(self, body) -> list[_K]:
        """Visit statements; returns the kinds of what they write."""
        out: list[_K] = []
        for n in body:
            out.extend(self.stmt(n))
        return out

    def stmt(self, n: nodes.Node) -> list[_K]:
        if isinstance(n, nodes.Output):
            written = []
            for e in n.nodes:
                k = self.expr(e)
                if k.kind not in (CLEAN, CONTENT):
                    raise NotOpaque(f"a {k.kind} object is written out", e)
                written.append(k)
            return written
        if isinstance(n, nodes.If):
            self.expr(n.test)
            out = self.stmts(n.body)
            for e in n.elif_:
                out.extend(self.stmt(e))
            out.extend(self.stmts(n.else_))
            return out
        if isinstance(n, nodes.For):
            if n.recursive:
                raise NotOpaque("a recursive loop", n)
            it = self.expr(n.iter)
            if it.kind == MESSAGES:
                self.target(n.target, _K(MESSAGE), n)
            elif it.kind == CLEAN:
                self.target(n.target, _CLEAN, n)
            else:
                raise NotOpaque(f"a loop over a {it.kind} value", n)
            if n.test is not None:
                self.expr(n.test)
            return self.stmts(n.body) + self.stmts(n.else_)
        if isinstance(n, nodes.Assign):
            k = self.expr(n.node)
            self.target(n.target, k, n)
            return []
        if isinstance(n, nodes.AssignBlock):
            k = _CLEAN
            for w in self.stmts(n.body):
                k = self.add(k, w, n)
            if n.filter is not None:
                k = self.filter_chain(n.filter, k)
            self.target(n.target, k, n)
            return []
        if isinstance(n, nodes.Macro):
            for a in n.args:
                self.bind(a.name, _CLEAN, n)
            for d in n.defaults:
                if self.expr(d).kind != CLEAN:
                    raise NotOpaque("a macro default holds content", d)
            k = _CLEAN
            for w in self.stmts(n.body):
                k = self.add(k, w, n)
            old = self.macros.get(n.name)
            if old != k:
                self.macros[n.name] = k
                self.changed = True
            return []
        if isinstance(n, nodes.CallBlock):
            call = n.call
            if isinstance(call, nodes.Call) and isinstance(call.node, nodes.ExtensionAttribute) \
                    and call.node.name == "_generation" and not call.args and not n.args:
                return self.stmts(n.body)    # {% generation %}: writes its body
            raise NotOpaque("a call block", n)
        if isinstance(n, (nodes.Scope, nodes.ScopedEvalContextModifier, nodes.EvalContextModifier)):
            return self.stmts(getattr(n, "body", []))
        if isinstance(n, nodes.With):
            for t, v in zip(n.targets, n.values):
                self.target(t, self.expr(v), n)
            return self.stmts(n.body)
        if isinstance(n, nodes.ExprStmt):
            if self.expr(n.node).kind != CLEAN:
                raise NotOpaque("an expression statement on content", n)
            return []
        if isinstance(n, (nodes.Break, nodes.Continue)):
            return []
        raise NotOpaque(f"a {type(n).__name__} statement", n)

    def target(self, t: nodes.Node, k: _K, at: nodes.Node) -> None:
        if isinstance(t, nodes.Name):
            self.bind(t.name, k, at)
        elif isinstance(t, nodes.NSRef):
            self.bind(f"{t.name}.{t.attr}", k, at)
        elif isinstance(t, nodes.Tuple):
            if k.kind != CLEAN:
                raise NotOpaque(f"a {k.kind} value unpacked", at)
            for item in t.items:
                self.target(item, _CLEAN, at)
        else:
            raise NotOpaque(f"assignment to a {type(t).__name__}", at)

    # -------------------------------------------------------------------------------------------- expressions
    def add(self, a: _K, b: _K, n: nodes.Node) -> _K:
        for k in (a, b):
            if k.kind in (MESSAGE, MESSAGES):
                raise NotOpaque(f"a {k.kind} object in a concatenation", n)
        if CONTENT in (a.kind, b.kind):
            k = _K(CONTENT, a.copies + b.copies)
            if k.copies > _MAX_COPIES:
                raise NotOpaque("a value holds too many contents", n)
            self.copies = max(self.copies, k.copies)
            return k
        return _CLEAN

    def expr(self, n: nodes.Node) -> _K:  # noqa: C901 - one case per node type
        if isinstance(n, (nodes.Const, nodes.TemplateData)):
            return _CLEAN
        if isinstance(n, nodes.Name):
            if n.name in self.namespaces:
                raise NotOpaque(f"the namespace {n.name!r} used as a value", n)
            return self.names.get(n.name, _CLEAN)
        if isinstance(n, (nodes.Getattr, nodes.Getitem)):
            return self.item(n)
        if isinstance(n, nodes.Filter):
            return self.filter_chain(n, self.expr(n.node) if n.node is not None else _CLEAN)
        if isinstance(n, nodes.Test):
            k = self.expr(n.node)
            self.clean_args(n)
            if k.kind != CLEAN and n.name not in _TYPE_TESTS:
                raise NotOpaque(f"a {k.kind} value tested with '{n.name}'", n)
            return _CLEAN
        if isinstance(n, (nodes.Add, nodes.Concat)):
            parts = [n.left, n.right] if isinstance(n, nodes.Add) else n.nodes
            k = _CLEAN
            for p in parts:
                k = self.add(k, self.expr(p), n)
            return k
        if isinstance(n, (nodes.And, nodes.Or)):
            return _join(self.expr(n.left), self.expr(n.right), n)
        if isinstance(n, nodes.Not):
            self.expr(n.node)   # truthiness: the same for a sentinel and a non-empty content
            return _CLEAN
        if isinstance(n, nodes.CondExpr):
            self.expr(n.test)
            return _join(self.expr(n.expr1), self.expr(n.expr2) if n.expr2 is not None else _CLEAN, n)
        if isinstance(n, nodes.Compare):
            return self.compare(n)
        if isinstance(n, (nodes.BinExpr, nodes.UnaryExpr)):
            for c in n.iter_child_nodes():
                k = self.expr(c)
                if k.kind != CLEAN:
                    raise NotOpaque(f"arithmetic on a {k.kind} value", n)
            return _CLEAN
        if isinstance(n, (nodes.List, nodes.Tuple)):
            for item in n.items:
                if self.expr(item).kind != CLEAN:
                    raise NotOpaque("a message or content in a literal", n)
            return _CLEAN
        if isinstance(n, nodes.Dict):
            for p in n.items:
                if self.expr(p.key).kind != CLEAN or self.expr(p.value).kind != CLEAN:
                    raise NotOpaque("a message or content in a literal", n)
            return _CLEAN
        if isinstance(n, nodes.Call):
            return self.call(n)
        if isinstance(n, (nodes.MarkSafe, nodes.MarkSafeIfAutoescape)):
            return self.expr(n.expr)
        if isinstance(n, nodes.Slice):
            for c in (n.start, n.stop, n.step):
                if c is not None and self.expr(c).kind != CLEAN:
                    raise NotOpaque("a slice bound from content", n)
            return _CLEAN
        raise NotOpaque(f"a {type(n).__name__} expression", n)

    def clean_args(self, n: nodes.Node) -> None:
        for a in list(getattr(n, "args", [])) + [kw.value for kw in getattr(n, "kwargs", [])] + \
                [x for x in (getattr(n, "dyn_args", None), getattr(n, "dyn_kwargs", None)) if x is not None]:
            k = self.expr(a)
            if k.kind != CLEAN:
                raise NotOpaque(f"a {k.kind} value passed as an argument", a)

    def item(self, n: nodes.Getattr | nodes.Getitem) -> _K:
        key: Any
        if isinstance(n, nodes.Getattr):
            key, const = n.attr, True
        else:
            const = isinstance(n.arg, nodes.Const)
            key = n.arg.value if const else None
            if not const and not isinstance(n.arg, nodes.Slice) and self.expr(n.arg).kind != CLEAN:
                raise NotOpaque("an index from content", n)
        if isinstance(n.node, nodes.Name):
            if n.node.name in self.namespaces:
                if not isinstance(key, str):
                    raise NotOpaque(f"the namespace {n.node.name!r} indexed with a computed key", n)
                return self.names.get(f"{n.node.name}.{key}", _CLEAN)
            if n.node.name == "loop" and key in ("previtem", "nextitem"):
                return _K(MESSAGE)    # conservatively: the neighbour of a message is a message
        base = self.expr(n.node)
        if base.kind == CLEAN:
            if isinstance(n, nodes.Getitem) and isinstance(n.arg, nodes.Slice):
                self.expr(n.arg)
            return _CLEAN
        if base.kind == MESSAGES:
            if isinstance(n, nodes.Getitem):
                if isinstance(n.arg, nodes.Slice):
                    self.expr(n.arg)
                    return _K(MESSAGES)
                if not const or isinstance(key, int):
                    return _K(MESSAGE)
            raise NotOpaque(f"messages.{key}", n)
        if base.kind == MESSAGE:
            if not const or not isinstance(key, str):
                raise NotOpaque("a message indexed with a computed key", n)
            if key == "content":
                return _K(CONTENT, 1)
            if key in _DICT_METHODS:
                # a method of the message dict (Jinja falls back to attributes for a missing item too; ``.get(key)``
                # is read in ``call``): ``copy``/``items``/``values`` hand the content on, a bare method prints its
                # address
                raise NotOpaque(f"message.{key}", n)
            return _CLEAN   # 'role' and keys the gate's messages do not have
        raise NotOpaque(f"an item of a {base.kind} value", n)

    def filter_chain(self, n: nodes.Filter, base: _K) -> _K:
        self.clean_args(n)
        name = n.name
        if base.kind == CLEAN:
            return _CLEAN
        if base.kind == CONTENT and name in _CONTENT_FILTERS:
            self.trims = self.trims or name == "trim"
            return base
        if base.kind == MESSAGES:
            if name in ("length", "count"):
                return _CLEAN
            if name in ("first", "last"):
                return _K(MESSAGE)
            if name in ("list", "reverse"):
                return _K(MESSAGES)
            if name in ("selectattr", "rejectattr") and n.args and isinstance(n.args[0], nodes.Const) \
                    and n.args[0].value == "role":
                return _K(MESSAGES)
            if name == "map" and not n.args and [(kw.key, getattr(kw.value, "value", None)) for kw in n.kwargs] \
                    == [("attribute", "role")]:
                return _CLEAN
        raise NotOpaque(f"a {base.kind} value through the '{name}' filter", n)

    def compare(self, n: nodes.Compare) -> _K:
        left = self.expr(n.expr)
        for op in n.ops:
            right = self.expr(op.expr)
            if op.op in ("in", "notin") and left.kind == CLEAN and right.kind == MESSAGE:
                continue   # a key test on a message: its keys are the same for every row
            if left.kind != CLEAN or right.kind != CLEAN:
                raise NotOpaque(f"a {left.kind if left.kind != CLEAN else right.kind} value compared", n)
            left = right
        return _CLEAN

    def call(self, n: nodes.Call) -> _K:
        f = n.node
        if isinstance(f, nodes.Getattr) and self.expr(f.node).kind == MESSAGE and f.attr == "get":
            if not n.args or not isinstance(n.args[0], nodes.Const) or n.kwargs or n.dyn_args or n.dyn_kwargs:
                raise NotOpaque("message.get() with a computed key", n)
            got = _K(CONTENT, 1) if n.args[0].value == "content" else _CLEAN
            for d in n.args[1:]:
                got = _join(got, self.expr(d), n)
            return got
        self.clean_args(n)
        if isinstance(f, nodes.Name) and f.name in self.macros:
            return self.macros[f.name]
        if isinstance(f, nodes.Name) and f.name == "caller":
            raise NotOpaque("caller()", n)
        k = self.expr(f)
        if k.kind != CLEAN:
            raise NotOpaque(f"a method of a {k.kind} value called", n)
        return _CLEAN


@lru_cache(maxsize=256)
def analyse(source: str) -> Opacity:
    """Whether the template ``source`` is content-opaque (see the module's doc), and why not."""
    try:
        tree = make_environment().parse(source)
    except jinja2.TemplateSyntaxError as e:
        return Opacity(False, f"syntax error: {e.message}")
    try:
        return _Analysis(tree).run()
    except NotOpaque as e:
        return Opacity(False, str(e))
    except RecursionError:
        return Opacity(False, "too deeply nested")


# ---------------------------------------------------------------------------------------------------- the filler
class FillRenderer:
    """Renders the rows of a content-opaque template by filling its shape renders (``None`` where a row needs the
    real render: the template is not opaque, the row's messages are not plain ``role``/``content`` strings, a content
    is empty, holds a sentinel character or — for a trimming template — edge whitespace, the shape render fails or
    writes a content other than once, or a size bound could be reached)."""

    max_shapes = 4096

    def __init__(self, template):
        self.template = template
        self.proof = analyse(template.source)
        self._shapes: dict[tuple, Any] = {}

    @property
    def opaque(self) -> bool:
        return self.proof.opaque

    def fill(self, messages: list[dict]):
        """``(Rendering, {message index: (content start, content end)})`` of the row, or None."""
        if not self.proof.opaque or not messages:
            return None
        trims = self.proof.trims
        contents = {}
        longest = 0
        for i, m in enumerate(messages):
            c = m.get("content")
            if len(m) != 2 or type(c) is not str or type(m.get("role")) is not str or not c \
                    or has_sentinel_chars(c) or (trims and (c[0].isspace() or c[-1].isspace())):
                return None
            contents[i] = c
            longest = max(longest, len(c))
        key = tuple(m["role"] for m in messages)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = self._shape(messages)
            if len(self._shapes) > self.max_shapes:
                self._shapes.clear()
        if shape is False:
            return None
        r, where = shape
        limit = self.template.max_chars
        if r.peak + self.proof.copies * longest > limit:
            return None
        text, at = fill(r.text, where, contents)
        if len(text) > limit:
            return None
        return Rendering(text, [], r.undefined, r.peak), at

    def _shape(self, messages: list[dict]):
        n = len(messages)
        try:
            r = self.template.render_full(sentinel_messages([{"role": m["role"]} for m in messages], range(n)))
        except Exception:  # noqa: BLE001 - the row's own render reports it
            return False
        where = places(r.text, range(n))
        return (r, where) if where is not None else False
