"""The HF Jinja renderer: transformers' ``apply_chat_template`` semantics, compiled once, bounded, sandboxed.

What transformers does (``transformers.utils.chat_template_utils``) and what we copy exactly:
``ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)`` with the ``loopcontrols`` extension and a
``{% generation %}`` extension, ``raise_exception``, ``strftime_now``, a ``tojson`` that does not HTML-escape, a
``dict`` and a ``namespace`` that refuse underscore names, the tokenizer's special tokens as variables, and message
keys whose value is ``None`` dropped before rendering.

What we add, because templates come from strangers (hub repos, GGUF files):

* unsafe attribute access raises at once (jinja's sandbox returns an ``Undefined`` that only raises when used, so
  ``{{ x.__class__ }}`` would render as nothing); every refusal is a :class:`TemplateRenderError` of kind
  ``"security"``;
* a render-time bound enforced by a watchdog thread that raises inside the rendering thread when the deadline
  passes (a pure-Python loop cannot escape it), and an output-size bound checked on every emitted chunk, on
  every call's arguments and result, on ``+``/``*``/``**`` and on namespace assignments (so exponential string
  growth stops before it exhausts memory);
* ``strftime_now`` reads a pinnable clock, so renders that print today's date are reproducible;
* the names of undefined variables a render *printed or iterated* (silently producing nothing) are recorded.
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tmplcheck.validator.ingest import REASONING_KEYS

DEFAULT_MAX_SECONDS = 2.0
DEFAULT_MAX_CHARS = 4_000_000
#: Biggest exponent ``**`` may take, and biggest int a str-padding method or filter may get.
_MAX_POW_BITS = 4096


class TemplateLoadError(ValueError):
    """A template could not be found, read or compiled. ``kind``: ``"missing"``, ``"syntax"``, ``"load"``."""

    def __init__(self, message: str, kind: str = "load", *, lineno: int | None = None):
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.lineno = lineno


class TemplateRenderError(Exception):
    """Rendering one conversation failed.

    ``kind`` is one of ``"raise"`` (the template called ``raise_exception``), ``"undefined"`` (an operation on an
    undefined value), ``"security"`` (the sandbox refused an attribute, call or mutation), ``"timeout"`` and
    ``"size"`` (a render bound was exceeded), ``"no-markers"`` (a mask was asked of a template without
    ``{% generation %}``) or ``"error"`` (any other exception inside the template, e.g. a ``TypeError``).
    """

    def __init__(self, message: str, kind: str = "error", *, lineno: int | None = None):
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.lineno = lineno

    def __str__(self) -> str:
        return self.message


class _RenderTimeout(BaseException):
    """Raised asynchronously inside the rendering thread by the watchdog (BaseException: templates can't catch it)."""


class _LimitExceeded(Exception):
    pass


# ------------------------------------------------------------------------------------------------------ the watchdog
class _Job:
    """One render's deadline, in a slot the watchdog polls (no lock, no wake-up on the render path)."""

    __slots__ = ("tid", "deadline", "active", "fired")

    def __init__(self, tid: int, deadline: float):
        self.tid = tid
        self.deadline = deadline
        self.active = True
        self.fired = False


class _Watchdog:
    """One daemon thread per process; raises :class:`_RenderTimeout` in a thread whose render overran.

    Registering a render is a dict store and finishing it two attribute writes: the thread polls the slots every
    ``poll`` seconds instead of being woken per render (a render costs ~0.1 ms; a lock and a condition wake-up per
    render cost as much). The rare firing path is guarded: the thread sets ``firing`` before it looks at a slot and
    holds ``_lock`` while it fires; a render that finishes sees ``firing``/``fired`` and, under the lock, clears an
    exception that was set but not yet delivered, so a late timeout never lands outside its render.
    """

    poll = 0.02

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[int, _Job] = {}
        self._pid = -1
        self.firing = False

    def _ensure(self) -> None:
        with _START_LOCK:
            if self._pid < 0:  # first use, or a forked child (threads do not survive fork)
                self._jobs.clear()
                self._lock = threading.Lock()
                self.firing = False
                threading.Thread(target=self._run, name="tmplcheck-render-watchdog", daemon=True).start()
                self._pid = os.getpid()

    def _after_fork(self) -> None:
        global _START_LOCK
        _START_LOCK = threading.Lock()  # a lock held by another parent thread at fork would never be released
        self._pid = -1

    def _run(self) -> None:
        jobs_of = self._jobs.values  # the dict is cleared in place after a fork, never replaced
        while True:
            time.sleep(self.poll)
            if not self._jobs:
                continue
            now = time.monotonic()
            for j in list(jobs_of()):
                if j.deadline <= now and j.active and not j.fired:
                    with self._lock:
                        self.firing = True
                        if j.active:
                            j.fired = True
                            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(j.tid),
                                                                       ctypes.py_object(_RenderTimeout))
                        self.firing = False

    def register(self, seconds: float) -> _Job:
        if self._pid < 0:
            self._ensure()
        job = _Job(threading.get_ident(), time.monotonic() + seconds)
        self._jobs[job.tid] = job
        return job

    def unregister(self, job: _Job, delivered: bool = False) -> None:
        """The render of ``job`` is over; ``delivered``: it ended by the watchdog's exception."""
        job.active = False
        if job.fired or self.firing:
            with self._lock:  # the thread has finished firing
                if job.fired and not delivered:
                    _take_pending_timeout()
        if self._jobs.get(job.tid) is job:
            del self._jobs[job.tid]


def _take_pending_timeout() -> None:
    """Take the watchdog's exception that was set for this thread but not delivered, here where it is expected.
    (Clearing it with ``PyThreadState_SetAsyncExc(tid, NULL)`` instead leaves the interpreter's asynchronous
    exception signal set with no exception behind it: CPython 3.11 then never clears it, and a later hypothesis run
    in the process spins forever.) The interpreter delivers a pending asynchronous exception at the next backward
    jump of a loop."""
    try:
        for _ in range(64):
            pass
    except _RenderTimeout:
        pass


_START_LOCK = threading.Lock()


_WATCHDOG = _Watchdog()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_WATCHDOG._after_fork)


# --------------------------------------------------------------------------------------------------- render state
@dataclass
class _State:
    max_chars: int
    emitted: int = 0
    spans: list[tuple[int, int]] | None = None
    peak: int = 0          # the largest value size the bounds checked (``validator/opaque.py`` reads it)
    undefined: set[str] = field(default_factory=set)


_STATE: ContextVar[_State | None] = ContextVar("tmplcheck_render_state", default=None)


def _too_big(n: int) -> None:
    st = _STATE.get()
    limit = st.max_chars if st else DEFAULT_MAX_CHARS
    if st is not None and n > st.peak:
        st.peak = n
    if n > limit:
        raise _LimitExceeded(f"the template built a value of {n:,} characters/items, over the {limit:,} limit")


def _size(v: Any) -> int:
    if isinstance(v, (str, list, tuple, dict, bytes)):
        return len(v)
    return 0


class _TrackingUndefined(jinja2.Undefined):
    """transformers' default ``Undefined`` (prints as nothing), recording top-level names that were printed."""

    __slots__ = ()

    def _note(self) -> None:
        st = _STATE.get()
        if st is not None and self._undefined_obj is jinja2.utils.missing and self._undefined_name:
            st.undefined.add(self._undefined_name)

    def __str__(self) -> str:
        self._note()
        return ""

    def __iter__(self):
        self._note()
        return iter(())

    def __len__(self) -> int:
        self._note()
        return 0


class _GenerationExtension(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: renders its body unchanged and records its character span."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_generation"), [], [], body).set_lineno(lineno)

    def _generation(self, caller) -> str:
        rv = caller()
        st = _STATE.get()
        if st is not None and st.spans is not None:
            st.spans.append((st.emitted, st.emitted + len(rv)))
        return rv


class _TemplateDict:
    """transformers' ``dict`` global: callable, ``fromkeys``, nothing else reachable."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """transformers' namespace (no underscore names), plus a size bound on what is stored."""

    def __init__(*args, **kwargs):  # noqa: N805 - jinja's signature trick so that namespace(self=...) works
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name, value in attrs.items():
            _TemplateNamespace._check(name, value)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _TemplateNamespace._check(name, value)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name, value) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"Chat templates cannot store underscore-prefixed attributes on a namespace, "
                                f"but got {name!r}.")
        _too_big(_size(value))


class _BoundedRange:
    """The sandbox's ``range`` (at most 100,000 items) that also counts toward the size bound when listed."""

    def __init__(self, *args):
        from jinja2.sandbox import safe_range

        self._r = safe_range(*args)

    def __iter__(self):
        return iter(self._r)

    def __len__(self):
        return len(self._r)

    def __getitem__(self, i):
        return self._r[i]

    def __contains__(self, x):
        return x in self._r

    def __reversed__(self):
        return reversed(self._r)


_WIDTH_METHODS = {"center", "ljust", "rjust", "zfill", "expandtabs"}
_WIDTH_FILTERS = {"center", "indent", "wordwrap", "truncate", "batch", "slice"}


_DATA_TYPES = frozenset({str, int, float, bool, type(None), list, dict, tuple})
_DICT_ATTRS = frozenset(dir(dict))
_STR_ATTRS = frozenset(dir(str))

#: set while the errors of the renders are only caught, never shown (``errors_unshown``)
_ERRORS_UNSHOWN: ContextVar[bool] = ContextVar("tmplcheck_errors_unshown", default=False)


class errors_unshown:
    """``with errors_unshown():`` a render that fails inside is only caught (a prefix render that fails is "no
    render"): jinja's rewriting of the traceback to template lines (~0.3 ms an error) is skipped."""

    def __enter__(self) -> "errors_unshown":
        self._token = _ERRORS_UNSHOWN.set(True)
        return self

    def __exit__(self, *exc: Any) -> None:
        _ERRORS_UNSHOWN.reset(self._token)


class _Environment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"+", "*", "**"})

    def getattr(self, obj: Any, attribute: str) -> Any:
        # the sandbox's rules, decided without its generic checks for the two types templates read most:
        # ``message.content`` on a dict (no such dict attribute: the item, else undefined) and a str method (safe
        # unless it starts with "_"; ``format``/``format_map`` are wrapped by the sandbox)
        t = type(obj)
        if t is dict:
            if attribute not in _DICT_ATTRS:
                try:
                    return obj[attribute]
                except KeyError:
                    return self.undefined(obj=obj, name=attribute)
        elif t is str and attribute not in ("format", "format_map") and not attribute.startswith("_"):
            if attribute not in _STR_ATTRS:
                return self.undefined(obj=obj, name=attribute)
            return getattr(obj, attribute)
        elif (t is _TemplateNamespace or t is jinja2.runtime.LoopContext) and not attribute.startswith("_"):
            # ``ns.x``, ``loop.index0``: safe unless it starts with "_"; plain data is returned as it is (anything
            # else, such as a method that may be ``str.format``, and a missing name, go the sandbox's way)
            try:
                value = getattr(obj, attribute)
            except AttributeError:
                pass
            else:
                if type(value) in _DATA_TYPES:
                    return value
        return super().getattr(obj, attribute)

    def handle_exception(self, source: str | None = None):
        if _ERRORS_UNSHOWN.get():
            raise   # the error as it is (jinja calls this inside its ``except``)
        return super().handle_exception(source)

    def unsafe_undefined(self, obj: Any, attribute: str):  # refuse now instead of returning a lazy Undefined
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805
        name = getattr(__obj, "__name__", "")
        if isinstance(getattr(__obj, "__self__", None), str) and name in _WIDTH_METHODS:
            for a in args:
                if isinstance(a, int):
                    _too_big(a)
        for a in args:
            _too_big(_size(a))
        for a in kwargs.values():
            _too_big(_size(a))
        rv = ImmutableSandboxedEnvironment.call(__self, __context, __obj, *args, **kwargs)
        _too_big(_size(rv))
        return rv

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        if operator == "+" and type(left) is str and type(right) is str:  # the common case, inlined
            st = _STATE.get()
            n = len(left) + len(right)
            if st is not None and n > st.peak:
                st.peak = n
            if n > (st.max_chars if st else DEFAULT_MAX_CHARS):
                _too_big(n)
            return left + right
        if operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0 and \
                    abs(left) > 1 and right * max(abs(left).bit_length(), 1) > _MAX_POW_BITS:
                raise _LimitExceeded(f"{left} ** {right} is over the size limit")
        elif operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                    _too_big(len(seq) * n)
        elif operator == "+":
            _too_big(_size(left) + _size(right))
        return super().call_binop(context, operator, left, right)


def _wrap_filter(name: str, fn):
    def bounded(*args, **kwargs):
        if name in _WIDTH_FILTERS:
            for a in list(args) + list(kwargs.values()):
                if isinstance(a, int) and not isinstance(a, bool):
                    _too_big(a)
        rv = fn(*args, **kwargs)
        _too_big(_size(rv))
        return rv

    for attr in ("jinja_pass_arg",):
        if hasattr(fn, attr):
            setattr(bounded, attr, getattr(fn, attr))
    bounded.__name__ = getattr(fn, "__name__", name)
    return bounded


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers' override: no HTML escaping, and indent/separators/sort_keys exposed
    def dumps(value: Any) -> str:
        return _tojson_of(value, ensure_ascii, indent, separators, sort_keys)

    memo = _SAME_ARGS.get()
    if memo is not None and type(x) in (dict, list):   # a part of this row's arguments (or a template's literal)
        try:
            key = ("tojson", id(x), ensure_ascii, indent, None if separators is None else tuple(separators),
                   sort_keys)
            hash(key)
        except TypeError:
            return dumps(x)
        return _once(memo, key, x, dumps)
    return dumps(x)


def _tojson_of(x, ensure_ascii, indent, separators, sort_keys) -> str:
    def dumps() -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    if indent is None:
        return dumps()
    # With an indent, json encodes in Python, ~10x slower than its C encoder; templates such as Llama 3.1's print
    # every tool with indent=4 in every render (a tool row is rendered many times). The value's compact form (the C
    # encoder: the same tokens, keys in the same order, the same errors) fixes the indented text, so it keys a cache.
    compact = json.dumps(x, ensure_ascii=ensure_ascii, sort_keys=sort_keys)
    if len(compact) > _TOJSON_MAX_KEY:
        return dumps()
    try:
        key = (compact, ensure_ascii, indent, None if separators is None else tuple(separators), sort_keys)
        hash(key)
    except TypeError:   # an unhashable indent or separator: json.dumps says what it makes of it
        return dumps()
    got = _TOJSON.get(key)
    if got is None:
        got = dumps()
        if len(_TOJSON) >= _TOJSON_ENTRIES:
            _TOJSON.clear()
        _TOJSON[key] = got
    return got


_TOJSON: dict[tuple, str] = {}
_TOJSON_ENTRIES = 4096         # entries kept (then the cache starts again)
_TOJSON_MAX_KEY = 1 << 16      # values whose compact form is longer are not cached


def _raise_exception(message):
    raise TemplateError(message)


def make_environment(now: datetime | None = None) -> _Environment:
    """A fresh environment with transformers' globals and filters, plus our bounds."""
    env = _Environment(trim_blocks=True, lstrip_blocks=True, undefined=_TrackingUndefined,
                       extensions=[_GenerationExtension, jinja2.ext.loopcontrols])
    for name, fn in list(env.filters.items()):
        env.filters[name] = _wrap_filter(name, fn)
    env.filters["tojson"] = _wrap_filter("tojson", _tojson)
    env.globals["raise_exception"] = _raise_exception

    def strftime_now(format):
        return (now or datetime.now()).strftime(format)

    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    env.globals["range"] = _BoundedRange
    return env


# ------------------------------------------------------------------------------------------------- message data
def _plain(value: Any) -> Any:
    """What transformers lets a template see: plain JSON types, rich objects replaced by an inert placeholder."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return f"<{type(value).__name__}>"


#: the plain copies of what the renders of one row are given (tools, documents, each message; ``tojson`` of their
#: parts), by the identity of the object given: set by :func:`same_arguments` around renders that pass the same,
#: unchanged objects (a row's prefix renders); the sandbox keeps templates from changing what they are given, so the
#: renders can share them
_SAME_ARGS: ContextVar[dict | None] = ContextVar("tmplcheck_same_arguments", default=None)


def _once(memo: dict | None, key: Any, value: Any, make: Callable[[Any], Any]) -> Any:
    """``make(value)``, made once per ``key`` (which holds ``id(value)``) while ``memo`` (``_SAME_ARGS``) is set;
    the value is kept with it, so that its id is not reused meanwhile."""
    if memo is None:
        return make(value)
    got = memo.get(key)
    if got is None or got[0] is not value:
        got = memo[key] = (value, make(value))
    return got[1]


def _plain_once(value: Any) -> Any:
    return _once(_SAME_ARGS.get(), id(value), value, _plain)


class same_arguments:
    """``with same_arguments():`` the renders inside are given the same message, tools and documents objects,
    unchanged between them (their plain copies are made once, and ``tojson`` of a part of them once)."""

    def __enter__(self) -> "same_arguments":
        self._token = _SAME_ARGS.set({})
        return self

    def __exit__(self, *exc: Any) -> None:
        _SAME_ARGS.reset(self._token)


#: the names a message's reasoning is passed under (transformers 5: ``_REASONING_FIELDS``)
REASONING_FIELDS = REASONING_KEYS


def normalize_messages(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """transformers' normalisation (5.x ``_normalize_chat_messages`` and ``_alias_reasoning_fields``): each message
    a plain dict, keys whose value is ``None`` dropped, and reasoning given under any of ``reasoning_content``,
    ``thinking``, ``reasoning`` copied to ``reasoning_content`` (the first one given wins) and to ``thinking``
    (unless the message has its own), the names Qwen3/DeepSeek and GPT-OSS templates read."""
    memo = _SAME_ARGS.get()
    return [_once(memo, id(m), m, _normalize_message) for m in messages]


def _normalize_message(m: Any) -> dict[str, Any]:
    if not isinstance(m, Mapping):
        raise TemplateRenderError(f"a message must be a mapping, got {type(m).__name__}", "error")
    d = {k: _plain(v) for k, v in m.items() if v is not None}
    if len(d) > 2:
        reasoning = next((d[k] for k in REASONING_FIELDS if d.get(k) is not None), None)
        if reasoning is not None:
            d = {"thinking": reasoning, **d, "reasoning_content": reasoning}
    return d


# ------------------------------------------------------------------------------------------------------ renderer
@dataclass
class Rendering:
    text: str
    spans: list[tuple[int, int]]          # {% generation %} spans (character offsets), empty unless asked for
    undefined: frozenset[str]             # top-level variables that were printed or iterated while undefined
    peak: int = 0                         # the largest value size the render's bounds checked (output aside)


def compile_template(source: str, env: _Environment | None = None) -> jinja2.Template:
    """Compile, turning a syntax error into :class:`TemplateLoadError` (kind ``"syntax"``) with its line."""
    env = env or make_environment()
    try:
        return env.from_string(source)
    except TemplateSyntaxError as e:
        raise TemplateLoadError(f"line {e.lineno}: {e.message}", "syntax", lineno=e.lineno) from None
    except (RecursionError, MemoryError) as e:
        raise TemplateLoadError(f"template too deeply nested to compile ({type(e).__name__})", "syntax") from None


def _error_line(tb) -> int | None:
    """The template line of the innermost template frame of a traceback (jinja rewrites those frames so that
    their line numbers are template lines)."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


class HFRenderer:
    """Render conversations with one compiled chat template, the way ``tokenizer.apply_chat_template`` does.

    ``variables`` are passed to every render (the tokenizer's special tokens: ``bos_token``, ``eos_token``...);
    keyword arguments of :meth:`render` override them, like transformers' ``**kwargs``. ``now`` pins the clock
    ``strftime_now`` reads. Raises :class:`TemplateLoadError` on a syntax error.
    """

    def __init__(self, source: str, *, variables: Mapping[str, Any] | None = None, now: datetime | None = None,
                 max_seconds: float = DEFAULT_MAX_SECONDS, max_chars: int = DEFAULT_MAX_CHARS):
        self.source = source
        self.variables = dict(variables or {})
        self.now = now
        self.max_seconds = max_seconds
        self.max_chars = max_chars
        self.env = make_environment(now)
        self.template = compile_template(source, self.env)

    def render(self, messages: Iterable[Mapping[str, Any]], *, add_generation_prompt: bool = False,
               tools: list | None = None, documents: list | None = None, **extra: Any) -> str:
        return self.render_full(messages, add_generation_prompt=add_generation_prompt, tools=tools,
                                documents=documents, **extra).text

    def render_with_spans(self, messages, **kw) -> tuple[str, list[tuple[int, int]]]:
        r = self.render_full(messages, spans=True, **kw)
        return r.text, r.spans

    def render_full(self, messages: Iterable[Mapping[str, Any]], *, add_generation_prompt: bool = False,
                    tools: list | None = None, documents: list | None = None, spans: bool = False,
                    **extra: Any) -> Rendering:
        """Render and return the text, the generation spans (when ``spans``) and the undefined names used."""
        msgs = normalize_messages(messages)
        ctx = {**{k: _plain(v) for k, v in self.variables.items()}, **{k: _plain(v) for k, v in extra.items()}}
        # tools/documents given to the renderer as defaults (``Template.with_arguments``) serve renders without them
        ctx.update(messages=msgs, tools=_plain_once(tools) if tools is not None else ctx.get("tools"),
                   documents=_plain_once(documents) if documents is not None else ctx.get("documents"),
                   add_generation_prompt=add_generation_prompt)
        st = _State(self.max_chars, spans=[] if spans else None)
        token = _STATE.set(st)
        chunks: list[str] = []
        try:
            try:
                job = _WATCHDOG.register(self.max_seconds)
                try:
                    for chunk in self.template.generate(**ctx):
                        chunks.append(chunk)
                        st.emitted += len(chunk)
                        if st.emitted > self.max_chars:
                            raise _LimitExceeded(f"the render passed the {self.max_chars:,}-character output limit")
                except _RenderTimeout:
                    _WATCHDOG.unregister(job, delivered=True)
                    raise
                except BaseException:
                    _WATCHDOG.unregister(job)
                    raise
                _WATCHDOG.unregister(job)
            except _RenderTimeout:
                raise TemplateRenderError(f"the render took longer than {self.max_seconds:g} s and was stopped",
                                          "timeout") from None
        except TemplateRenderError:
            raise
        except _LimitExceeded as e:
            raise TemplateRenderError(str(e), "size") from None
        except SecurityError as e:
            raise TemplateRenderError(f"sandbox refused: {e}", "security", lineno=_error_line(e.__traceback__)) \
                from None
        except UndefinedError as e:
            raise TemplateRenderError(str(e), "undefined", lineno=_error_line(e.__traceback__)) from None
        except TemplateError as e:
            raise TemplateRenderError(str(e), "raise", lineno=_error_line(e.__traceback__)) from None
        except RecursionError:
            raise TemplateRenderError("the template recursed too deeply", "size") from None
        except MemoryError:
            raise TemplateRenderError("the template ran out of memory", "size") from None
        except Exception as e:  # noqa: BLE001 - a template's TypeError, KeyError, ... is data, not our crash
            raise TemplateRenderError(f"{type(e).__name__}: {e}", "error", lineno=_error_line(e.__traceback__)) \
                from None
        finally:
            _STATE.reset(token)
        return Rendering("".join(chunks), st.spans or [], frozenset(st.undefined), st.peak)


def find_markers(source: str) -> bool:
    """Whether a template text holds ``{% generation %}`` blocks (the same test transformers uses)."""
    import re

    return re.search(r"\{\%-?\s*generation\s*-?\%\}", source) is not None
