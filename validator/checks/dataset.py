"""Conversation-level D checks: roles, order and content of the messages of one row."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from tmplcheck.validator.findings import Finding, finding
from tmplcheck.validator.ingest import Conversation

_CONTROL_CHARS = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
_SURROGATE_CHARS = "\ud800-\udfff"
_CONTROL = re.compile(f"[{_CONTROL_CHARS}]")
_SURROGATE = re.compile(f"[{_SURROGATE_CHARS}]")
_ODD = re.compile(f"[{_CONTROL_CHARS}{_SURROGATE_CHARS}\ufffd]")  # anything D026, D027 or D029 looks for
_ASCII_OK = b"\t\n\r" + bytes(range(0x20, 0x7F))   # the ASCII characters _ODD does not match


def is_plain(s: str) -> bool:
    """No character D026, D027 or D029 looks for (``_ODD``); ASCII text, the common case, without the regex."""
    if s.isascii():
        return not s.encode("ascii").translate(None, _ASCII_OK)
    return not _ODD.search(s)


def _at(conv: Conversation, pointer: str = "") -> dict:
    return {"path": conv.path, "line": conv.line, "pointer": pointer}


def check_content(conv: Conversation) -> Iterator[Finding]:
    for i, m in enumerate(conv.messages):
        stripped = m.content.strip()
        if stripped and stripped == m.content and is_plain(stripped):
            continue  # the common case, in one strip and one search
        where = _at(conv, m.pointer)
        if not stripped:
            if m.fields and (m.tool_calls or (m.reasoning or "").strip()):
                continue   # an assistant turn that calls a tool (or only reasons) needs no content
            what = "empty" if not m.content else "whitespace-only"
            yield finding("D013", f"{m.role} message {i} is {what}" + (" and calls no tool" if m.role == "assistant"
                                                                      else ""), **where)
            continue
        if m.content != stripped:
            edges = []
            if m.content[0].isspace():
                edges.append(f"leading {m.content[:len(m.content) - len(m.content.lstrip())]!r}")
            if m.content[-1].isspace():
                edges.append(f"trailing {m.content[len(m.content.rstrip()):]!r}")
            yield finding("D014", f"{m.role} message {i} has {' and '.join(edges)} whitespace", **where)
        ctl = _CONTROL.search(m.content)
        if ctl:
            ch = ctl.group()
            yield finding("D026", f"{m.role} message {i} holds control character U+{ord(ch):04X} at offset "
                                  f"{ctl.start()}", **where)
        sur = _SURROGATE.search(m.content)
        if sur:
            yield finding("D027", f"{m.role} message {i} holds unpaired surrogate U+{ord(sur.group()):04X} at "
                                  f"offset {sur.start()}", **where)
        if "\ufffd" in m.content and not conv.replaced_bytes:
            yield finding("D029", f"{m.role} message {i} holds U+FFFD at offset {m.content.index(chr(0xFFFD))}",
                          **where)


def check_order(conv: Conversation) -> Iterator[Finding]:
    msgs = conv.messages
    if not conv.usable:
        return  # a message could not be read: order checks on the rest would only mislead
    if not msgs:
        yield finding("D019", "conversation is empty", **_at(conv, conv.key))
        return
    systems = [i for i, m in enumerate(msgs) if m.role == "system"]
    for n, i in enumerate(systems):
        if i != 0:
            yield finding("D015", f"system message at position {i}; it must come first",
                          **_at(conv, conv.role_pointer(i)))
        if n == 1:
            yield finding("D016", f"{len(systems)} system messages (positions {', '.join(map(str, systems))})",
                          **_at(conv, conv.role_pointer(i)))
    body = [(i, m) for i, m in enumerate(msgs) if m.role != "system"]
    if body and body[0][1].role not in ("user",):
        i, m = body[0]
        yield finding("D025", f"first turn is {m.role}, not user", **_at(conv, conv.role_pointer(i)))
    for (i, a), (j, b) in zip(body, body[1:]):
        if a.role == b.role and a.role != "tool":
            yield finding("D017", f"messages {i} and {j} are both {a.role}", **_at(conv, conv.role_pointer(j)))
    if not any(m.role == "assistant" for m in msgs):
        yield finding("D019", "conversation has no assistant turn", **_at(conv, conv.key))
    elif msgs[-1].role != "assistant":
        yield finding("D018", f"conversation ends with a {msgs[-1].role} turn",
                      **_at(conv, conv.role_pointer(len(msgs) - 1)))


CONVERSATION_CHECKS = (check_content, check_order)


def check_conversation(conv: Conversation, *, tools: Any = None, train_on: str | None = None) -> Iterator[Finding]:
    """The row's D checks; ``tools``: the tools rows without their own are rendered with (``--tools``);
    ``train_on``: which assistant turns are trained when a message has no flag of its own (``--train-on``)."""
    for check in CONVERSATION_CHECKS:
        yield from check(conv)
    if not conv.plain or tools is not None:
        from tmplcheck.validator.checks.tools import check_tools

        yield from check_tools(conv, tools=tools)
    if not conv.plain:   # a plain row has no message fields, so no training flag
        from tmplcheck.validator.training_flags import check_training_flags

        yield from check_training_flags(conv, train_on)
