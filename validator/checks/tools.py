"""D checks of tool use: the shape of tool calls, tool results and the row's tool definitions.

Each is a small pure function over one :class:`Conversation` yielding located findings (line and JSON pointer of
the field at fault). Whether a string ``arguments`` is a defect depends on the template: one that writes the
arguments through ``tojson`` without testing ``is string`` (Llama 3.1, Qwen2.5) writes a JSON string inside the
call, double-encoded; one that tests for strings (Qwen3) writes it as is. :func:`template_traits` reads that from
the template's source once, and the checks take it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from tmplcheck.validator.findings import Finding, finding
from tmplcheck.validator.ingest import Conversation

#: what a ``tools`` entry must be: an OpenAI/HF function schema (``{"type": "function", "function": {...}}``) or
#: the bare function object some datasets write (``{"name", "description", "parameters"}``)
_FUNCTION = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "pattern": r"^[A-Za-z0-9_.\-]+$"},
        "description": {"type": "string"},
        "parameters": {"type": "object"},
        "strict": {"type": "boolean"},
    },
}
#: roles that carry a tool's result (Llama 3.1 also calls it ``ipython``; ``function`` is OpenAI's legacy name)
TOOL_ROLES = frozenset({"tool", "ipython", "function"})
TOOL_SCHEMA = {
    "oneOf": [
        {"type": "object", "required": ["type", "function"],
         "properties": {"type": {"const": "function"}, "function": _FUNCTION}},
        {"allOf": [_FUNCTION, {"not": {"required": ["function"]}}]},
    ],
}


@dataclass(frozen=True)
class TemplateTraits:
    """What the tool checks need to know of the template (``None`` template: nothing is known)."""

    tojson_arguments: bool = False       # writes ``arguments | tojson``
    handles_string_arguments: bool = False   # tests ``arguments is string`` (writes a string as is)

    @property
    def double_encodes(self) -> bool:
        return self.tojson_arguments and not self.handles_string_arguments


_TOJSON_ARGS = re.compile(r"arguments\s*\)?\s*\|\s*tojson")
_STRING_TEST = re.compile(r"arguments\s+is\s+(string|mapping)|arguments\s+is\s+not\s+(string|mapping)")


def template_traits(source: str | None) -> TemplateTraits:
    if not source:
        return TemplateTraits()
    return TemplateTraits(bool(_TOJSON_ARGS.search(source)), bool(_STRING_TEST.search(source)))


@cache
def _validator():
    from jsonschema import Draft202012Validator

    return Draft202012Validator(TOOL_SCHEMA)


_SCHEMA_VERDICTS: dict[str, str | None] = {}


def _schema_error(entry: Any) -> str | None:
    """Why a ``tools`` entry is not a function schema (None when it is one), remembered per distinct entry: a
    dataset repeats the same tool list on every row, and validating it costs milliseconds."""
    try:
        key = json.dumps(entry, sort_keys=True)
    except (TypeError, ValueError):
        return _validate_schema(entry)
    if key not in _SCHEMA_VERDICTS:
        if len(_SCHEMA_VERDICTS) > 4096:
            _SCHEMA_VERDICTS.clear()
        _SCHEMA_VERDICTS[key] = _validate_schema(entry)
    return _SCHEMA_VERDICTS[key]


def _validate_schema(entry: Any) -> str | None:
    """Why a ``tools`` entry is not a function schema; its ``parameters`` must itself be a valid JSON Schema."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    errors = sorted(_validator().iter_errors(entry), key=lambda e: len(list(e.absolute_path)))
    if errors:
        best = errors[0]
        for e in errors:   # oneOf hides the useful sub-error: report the deepest one
            for sub in e.context or ():
                if len(list(sub.absolute_path)) >= len(list(best.absolute_path)):
                    best = sub
        where = "/".join(str(p) for p in best.absolute_path)
        return f"{best.message}" + (f" (at {where})" if where else "")
    fn = entry.get("function", entry) if isinstance(entry, dict) else {}
    params = fn.get("parameters")
    if params is not None:
        try:
            Draft202012Validator.check_schema(params)
        except SchemaError as e:
            return f"'parameters' is not a valid JSON Schema: {e.message}"
    return None


def tool_names(tools: Any) -> set[str] | None:
    """The function names a ``tools`` list defines (None when it is not a list)."""
    if not isinstance(tools, list):
        return None
    names = set()
    for t in tools:
        if isinstance(t, dict):
            fn = t.get("function", t)
            if isinstance(fn, dict) and isinstance(fn.get("name"), str):
                names.add(fn["name"])
    return names


def check_tool_schemas(conv: Conversation) -> Iterator[Finding]:
    """D046: every entry of the row's ``tools`` is a function schema."""
    if not isinstance(conv.tools, list):
        return
    for i, entry in enumerate(conv.tools):
        why = _schema_error(entry)
        if why is not None:
            yield finding("D046", f"tools entry {i} is not a function schema: {why}", path=conv.path,
                          line=conv.line, pointer=f"/tools/{i}")


def _call_parts(call: dict) -> tuple[dict, str]:
    """The function object of a call and the pointer suffix it sits at (``/function`` for the OpenAI shape)."""
    fn = call.get("function")
    if isinstance(fn, dict):
        return fn, "/function"
    return call, ""


def check_tool_calls(conv: Conversation, tools: Any = None) -> Iterator[Finding]:
    """D040-D045: the shape of each assistant tool call and that every tool result answers one.

    ``tools``: the tools the row is rendered with when the row has none of its own (``--tools``)."""
    where = {"path": conv.path, "line": conv.line}
    defined = tool_names(conv.tools if conv.tools is not None else tools)
    open_ids: set[str] | None = None   # ids of the calls the latest assistant turn made (None: no call made yet)
    for i, m in enumerate(conv.messages):
        base = m.pointer.rsplit("/", 1)[0]
        if m.role == "user":
            open_ids = None
        if m.role in TOOL_ROLES:
            if open_ids is None:
                yield finding("D045", f"{m.role} message {i} answers no tool call: no assistant turn before it "
                                      "called a tool", pointer=base, **where)
                continue
            tid = m.get("tool_call_id")
            if isinstance(tid, str) and open_ids and tid not in open_ids:
                yield finding("D045", f"{m.role} message {i} has tool_call_id {tid!r}, which matches none of the "
                                      f"calls before it ({', '.join(sorted(open_ids))})",
                              pointer=f"{base}/tool_call_id", **where)
            continue
        if m.role != "assistant":
            continue
        calls = m.tool_calls
        if calls is None:
            if any(k == "tool_calls" for k, _ in m.fields):
                continue   # null: no calls
            open_ids = None
            continue
        ptr = f"{base}/tool_calls"
        if not isinstance(calls, list):
            yield finding("D040", f"assistant message {i}'s tool_calls is {type(calls).__name__}, expected a list "
                                  "of calls", pointer=ptr, **where)
            continue
        open_ids = set()
        for k, call in enumerate(calls):
            cp = f"{ptr}/{k}"
            if not isinstance(call, dict):
                yield finding("D040", f"tool call {k} of message {i} is not an object", pointer=cp, **where)
                continue
            if isinstance(call.get("id"), str):
                open_ids.add(call["id"])
            fn, sub = _call_parts(call)
            name = fn.get("name")
            if not isinstance(name, str) or not name:
                yield finding("D041", f"tool call {k} of message {i} has no function name", pointer=cp + sub,
                              **where)
            elif defined is not None and name not in defined:
                yield finding("D044", f"tool call {k} of message {i} calls {name!r}, which the row's tools do not "
                                      f"define ({', '.join(sorted(defined)) or 'none'})",
                              pointer=f"{cp}{sub}/name", **where)
            if "arguments" not in fn:
                continue
            args = fn["arguments"]
            ap = f"{cp}{sub}/arguments"
            if isinstance(args, str):
                try:
                    parsed = json.loads(args)
                except (json.JSONDecodeError, RecursionError) as e:
                    yield finding("D043", f"tool call {k} of message {i}: arguments do not parse as JSON "
                                          f"({getattr(e, 'msg', type(e).__name__)})", pointer=ap, **where)
                    continue
                if not isinstance(parsed, dict):
                    yield finding("D043", f"tool call {k} of message {i}: arguments are a JSON "
                                          f"{type(parsed).__name__}, expected an object", pointer=ap, **where)
            elif not isinstance(args, dict):
                yield finding("D043", f"tool call {k} of message {i}: arguments are "
                                      f"{type(args).__name__}, expected an object", pointer=ap, **where)


def check_double_encoding(conv: Conversation, traits: TemplateTraits) -> Iterator[Finding]:
    """D042: arguments given as a JSON string holding an object, for a template that writes them with ``tojson``
    (the template stage's check: it depends on the template; the shape checks above are the dataset stage's)."""
    if not traits.double_encodes:
        return
    for i, m in enumerate(conv.messages):
        calls = m.tool_calls if m.role == "assistant" else None
        if not isinstance(calls, list):
            continue
        for k, call in enumerate(calls):
            if not isinstance(call, dict):
                continue
            fn, sub = _call_parts(call)
            args = fn.get("arguments")
            if not isinstance(args, str):
                continue
            try:
                parsed = json.loads(args)
            except (json.JSONDecodeError, RecursionError):
                continue   # D043, from the dataset stage
            if isinstance(parsed, dict):
                yield finding("D042", f"tool call {k} of message {i}: arguments are a JSON string, and the template "
                                      "writes them with tojson: the model is trained on a quoted, escaped string "
                                      "instead of the JSON object it must generate", path=conv.path, line=conv.line,
                              pointer=f"{m.pointer.rsplit('/', 1)[0]}/tool_calls/{k}{sub}/arguments")


def check_tools(conv: Conversation, tools: Any = None) -> Iterator[Finding]:
    if conv.plain and tools is None:
        return
    yield from check_tool_schemas(conv)
    yield from check_tool_calls(conv, tools)
