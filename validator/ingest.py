"""Read datasets as a stream of conversations, turning every defect of the file into a located D finding.

Rows come from JSONL (one object a line) or a ``.json`` file holding a list of rows; the list is split into
elements by a small scanner so that neither form is ever held in memory whole.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

from tmplcheck.validator.bounds import check_decoded, check_raw
from tmplcheck.validator.findings import Finding, finding

DEFAULT_MAX_LINE_BYTES = 10 * 1024 * 1024
_BOM = b"\xef\xbb\xbf"

#: ShareGPT's ``from`` names → the role the template sees. This table is the whole mapping (README "Roles"): a name
#: that is not in it is an unknown role (D012), never guessed. OpenAI ``role`` values are never mapped: the template
#: gets them exactly as written, as transformers passes them.
SHAREGPT_ROLES: dict[str, str] = {
    "system": "system",
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant", "bot": "assistant", "chatgpt": "assistant",
    "bard": "assistant",
    "function_call": "assistant",   # LLaMA-Factory: an assistant turn that calls a tool (its value is the call)
    "observation": "tool", "tool": "tool", "function": "tool", "function_response": "tool", "ipython": "ipython",
}
#: the ShareGPT conventions a row can follow; a row whose names come from more than one mixes them (D049)
_SHAREGPT_STYLE = {"human": "sharegpt", "gpt": "sharegpt", "user": "openai", "assistant": "openai"}
#: roles some chat template knows (OpenAI rows): anything else is rendered as written and reported (D012)
KNOWN_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "ipython", "function"})
#: where reasoning lives in a message: transformers passes the message as written, and templates read one of these
#: (Qwen3, DeepSeek-R1, GLM: ``reasoning_content``; GPT-OSS: ``thinking``; others ``reasoning``)
REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")
FORMATS = ("sharegpt", "openai", "alpaca")
_FIELDS = {"sharegpt": ("conversations", "from", "value"), "openai": ("messages", "role", "content")}
#: Alpaca rows (``instruction``, optional ``input``, ``output``, optional ``system``) → system/user/assistant turns.
#: The user turn is the instruction, then a blank line, then the input when the input is not empty — what
#: Alpaca-style chat conversions (axolotl's ``alpaca_chat``, Stanford Alpaca's prompt without its headers) do;
#: LLaMA-Factory joins with a single newline instead. README "Inputs" says so.
ALPACA_JOIN = "\n\n"
#: row fields that go to the template (``apply_chat_template(messages, tools=..., documents=..., **kwargs)``)
ROW_FIELDS = ("tools", "documents", "chat_template_kwargs")


class Message(NamedTuple):
    """One message, as the HF chat schema has it (immutable; a named tuple: rows are made by the hundred thousand).

    ``role`` is what the template sees; ``content`` is the content's text, which the D checks read (``""`` when the
    message has none; the text parts joined for typed content). ``fields`` holds every other key of the message as
    written — ``tool_calls``, ``tool_call_id``, ``name``, reasoning, training flags — and ``content`` itself when it
    is not a plain string (typed parts, ``null``); :meth:`as_dict` gives exactly what ``apply_chat_template`` gets.
    """

    role: str
    content: str
    pointer: str         # JSON pointer of the content field, e.g. /conversations/2/value
    raw_role: str = ""
    fields: tuple = ()   # ((key, value), ...) in the row's order

    def as_dict(self) -> dict[str, Any]:
        d = {"role": self.role, "content": self.content}
        if self.fields:
            d.update(self.fields)
        return d

    def get(self, key: str, default: Any = None) -> Any:
        for k, v in self.fields:
            if k == key:
                return v
        return default

    @property
    def tool_calls(self) -> Any:
        return self.get("tool_calls")

    @property
    def reasoning(self) -> str | None:
        """The message's reasoning text (``reasoning_content``/``thinking``/``reasoning``), else None."""
        for k, v in self.fields:
            if k in REASONING_KEYS and isinstance(v, str):
                return v
        return None


@dataclass
class Conversation:
    """One row that could be read: its messages, the row's template arguments, and where it came from."""

    path: str
    line: int
    format: str                      # sharegpt | openai
    messages: list[Message]
    key: str                         # /conversations or /messages
    usable: bool = True              # False when a message could not be read (the row still gets its findings)
    digest: bytes = b""             # 16 bytes identifying the row's messages and template arguments
    replaced_bytes: bool = False     # invalid UTF-8 was replaced by U+FFFD (already reported as D002)
    tools: Any = None                # the row's ``tools`` (a list of function schemas), as the template gets them
    documents: Any = None
    template_kwargs: dict[str, Any] | None = None   # the row's ``chat_template_kwargs``
    pointers: dict[str, str] | None = None          # JSON pointer of each row field above (tools, documents...)
    reasoning: bool | None = None   # an assistant turn carries reasoning (None: not decided yet, see has_reasoning)

    def has_reasoning(self) -> bool:
        """An assistant turn of the row carries reasoning: a reasoning field, or a ``</think>`` in its content."""
        if self.reasoning is None:
            self.reasoning = any(m.role == "assistant" and ((m.fields and (m.reasoning or "").strip())
                                                            or "</think>" in m.content) for m in self.messages)
        return self.reasoning

    def dicts(self) -> list[dict[str, Any]]:
        return [m.as_dict() for m in self.messages]

    @property
    def plain(self) -> bool:
        """Role and string content only, no template arguments: the row every fast path of the gate handles."""
        return self.tools is None and self.documents is None and not self.template_kwargs and \
            all(not m.fields for m in self.messages)

    def render_kw(self, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
        """The keyword arguments ``apply_chat_template`` gets for this row: ``defaults`` (``--tools``,
        ``--documents``, ``--template-kwargs``), overridden by the row's own fields."""
        kw = dict(defaults or {})
        if self.template_kwargs:
            kw.update(self.template_kwargs)
        if self.tools is not None:
            kw["tools"] = self.tools
        if self.documents is not None:
            kw["documents"] = self.documents
        return kw

    def role_pointer(self, index: int) -> str:
        if self.format == "alpaca":   # no role field: the field the message came from
            return self.messages[index].pointer
        return f"{self.key}/{index}/{_FIELDS[self.format][1]}"


@dataclass
class Row:
    """What ingest yields for every non-blank record: the conversation if one could be read, and findings."""

    line: int
    conversation: Conversation | None
    findings: list[Finding] = field(default_factory=list)


class _DupKeys(dict):
    pass


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict:
    d = _DupKeys()
    dups = []
    for k, v in pairs:
        if k in d:
            dups.append(k)
        d[k] = v
    if dups:
        d.__dict__["_dups"] = dups
    return d


def _walk_dups(obj: Any, pointer: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(obj, dict):
        for k in getattr(obj, "__dict__", {}).get("_dups", []):
            yield pointer, k
        for k, v in obj.items():
            yield from _walk_dups(v, f"{pointer}/{_escape(k)}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk_dups(v, f"{pointer}/{i}")


def _escape(key: str) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


_DECODER = json.JSONDecoder(object_pairs_hook=_pairs_hook, parse_constant=lambda name: float(name.replace(
    "Infinity", "inf")))


class _SeenDuplicate(threading.local):
    hit = False
    odd = False   # a NaN/Infinity constant or a float that overflows to infinity (D062), seen while decoding


def _odd_constant(name: str) -> float:
    _SEEN.odd = True
    return float(name.replace("Infinity", "inf"))


def _checked_float(text: str) -> float:
    v = float(text)
    if v in (_INF, -_INF):
        _SEEN.odd = True
    return v


_INF = float("inf")


_SEEN = _SeenDuplicate()


def _flag_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    """``object_pairs_hook`` of the first decode: a plain dict (last value wins, as ``json.loads`` does), noting
    whether any object had a key twice (then the row is decoded again by the decoder that says where)."""
    d = dict(pairs)
    if len(d) != len(pairs):
        _SEEN.hit = True
    return d


_FLAGGING = json.JSONDecoder(object_pairs_hook=_flag_duplicates, parse_constant=_odd_constant,
                             parse_float=_checked_float)


def _plain(obj: Any) -> Any:
    """Turn the duplicate-key-tracking dicts back into plain dicts."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------------------- raw records
@dataclass
class _Record:
    line: int
    data: bytes | None           # None when over the size limit
    findings: list[Finding]


def _iter_lines(fh: IO[bytes], path: str, max_bytes: int, block: int = 1 << 20) -> Iterator[_Record]:
    """Yield each line's bytes without its terminator; over-long lines are skipped while streaming.

    Read in blocks of ``block`` bytes and split, not a ``readline`` a line. A line (with its newline) is over the
    limit when it is longer than ``max_bytes + 2`` bytes, or longer than ``max_bytes`` without a newline (the last
    line); D022 gives its size with the newline. A line in progress longer than that is drained without being kept,
    so memory stays within ``max_bytes`` plus a block or two. CRLF endings lose their CR (D004), except on a last line
    without a newline; a UTF-8 byte-order mark at the start of the file goes (D003)."""
    k = max_bytes + 2
    lineno = 0
    rest = b""
    while True:
        data = fh.read(max(block, len(rest)))   # (a long line in progress: reads grow with it, copies stay linear)
        if not data and b"\n" not in rest:
            if rest:   # the last line, without a newline
                lineno += 1
                yield _over_limit(len(rest), lineno, path, max_bytes) if len(rest) > max_bytes else \
                    _line(rest, lineno, path, [])
            return
        buf = rest + data if rest else data
        parts = buf.split(b"\n")
        rest = parts.pop()
        if parts:
            if lineno == 0:
                lineno = 1
                yield _complete_line(parts[0], 1, path, max_bytes)
                parts = parts[1:]
            if b"\r" not in buf and (not parts or max(map(len, parts)) < k):
                first = lineno + 1
                lineno += len(parts)
                yield from map(_Record, range(first, lineno + 1), parts, [[] for _ in parts])
            else:
                for piece in parts:
                    lineno += 1
                    yield _complete_line(piece, lineno, path, max_bytes)
        if len(rest) >= k:
            # a line longer than the limit, not ended yet: count its bytes up to its newline without keeping them
            size = len(rest)
            rest = b""
            while True:
                data = fh.read(block)
                if not data:
                    break
                nl = data.find(b"\n")
                if nl >= 0:
                    size += nl + 1
                    rest = data[nl + 1:]
                    break
                size += len(data)
            lineno += 1
            yield _over_limit(size, lineno, path, max_bytes)


def _complete_line(piece: bytes, lineno: int, path: str, max_bytes: int) -> _Record:
    """A line that had a newline (``piece`` without it): over the limit (longer than ``max_bytes + 2`` with the
    newline), CRLF (D004), the first line's BOM."""
    if len(piece) + 1 > max_bytes + 2:
        return _over_limit(len(piece) + 1, lineno, path, max_bytes)
    found: list[Finding] = []
    if piece.endswith(b"\r"):
        found.append(finding("D004", "line ends with CRLF", path=path, line=lineno))
        piece = piece[:-1]
    return _line(piece, lineno, path, found)


def _line(piece: bytes, lineno: int, path: str, found: list[Finding]) -> _Record:
    """A line's record; the file's first line loses a UTF-8 byte-order mark (D003)."""
    if lineno == 1 and piece.startswith(_BOM):
        found.append(finding("D003", "file starts with a UTF-8 byte-order mark", path=path, line=1))
        piece = piece[len(_BOM):]
    return _Record(lineno, piece, found)


def _over_limit(size: int, lineno: int, path: str, max_bytes: int) -> _Record:
    return _Record(lineno, None, [finding("D022", f"line is {size} bytes, over the {max_bytes}-byte limit; not loaded",
                                          path=path, line=lineno)])


def _iter_json_array(fh: IO[bytes], path: str, max_bytes: int) -> Iterator[_Record]:
    """Split a top-level JSON list into its elements' bytes, streaming, with the line each element starts on."""
    buf = fh.read(1 << 16)
    found: list[Finding] = []
    if buf.startswith(_BOM):
        found.append(finding("D003", "file starts with a UTF-8 byte-order mark", path=path, line=1))
        buf = buf[len(_BOM):]
    line, pos = 1, 0

    def refill() -> bool:
        nonlocal buf, pos
        more = fh.read(1 << 16)
        if not more:
            return False
        buf = buf[pos:] + more
        pos = 0
        return True

    def skip_ws() -> int | None:
        nonlocal pos, line
        while True:
            while pos < len(buf) and buf[pos] in b" \t\r\n":
                if buf[pos] == 10:
                    line += 1
                pos += 1
            if pos < len(buf):
                return buf[pos]
            if not refill():
                return None

    first = skip_ws()
    if first != ord("["):
        yield _Record(line, None, found + [finding(
            "D001", "a .json dataset must hold a list of rows (expected '[')", path=path, line=line, column=1)])
        return
    pos += 1
    expect_elem = True
    while True:
        c = skip_ws()
        if c is None:
            yield _Record(line, None, [finding("D001", "unexpected end of file inside the top-level list",
                                               path=path, line=line)])
            return
        if c == ord("]") :
            return
        if c == ord(","):
            pos += 1
            expect_elem = True
            continue
        if not expect_elem:
            yield _Record(line, None, [finding("D001", "expected ',' or ']' between rows", path=path, line=line)])
            return
        start_line, start = line, pos
        depth, in_str, esc, size = 0, False, False, 0
        elem = bytearray()
        while True:
            if pos >= len(buf):
                elem += buf[start:pos]
                if not refill():
                    yield _Record(start_line, None, [finding("D001", "unexpected end of file inside a row",
                                                             path=path, line=start_line)])
                    return
                start = 0
            b = buf[pos]
            pos += 1
            size += 1
            if b == 10:
                line += 1
            if in_str:
                if esc:
                    esc = False
                elif b == 92:
                    esc = True
                elif b == 34:
                    in_str = False
            elif b == 34:
                in_str = True
            elif b in b"[{":
                depth += 1
            elif b in b"]}":
                depth -= 1
                if depth == 0:
                    break
            elif depth == 0 and b in b", \t\r\n]":
                pos -= 1
                size -= 1
                if b == 10:
                    line -= 1
                break
            if size > max_bytes:
                yield _Record(start_line, None, [finding(
                    "D022", f"row is over the {max_bytes}-byte limit; not loaded", path=path, line=start_line)])
                return
        elem += buf[start:pos]
        yield _Record(start_line, bytes(elem), found)
        found = []
        expect_elem = False


# ------------------------------------------------------------------------------------------------------ row parsing
def _decode(rec: _Record, path: str) -> tuple[Any, list[Finding]]:
    out = list(rec.findings)
    assert rec.data is not None
    try:
        text = rec.data.decode("utf-8")
    except UnicodeDecodeError as e:
        out.append(finding("D002", f"invalid UTF-8 at byte {e.start + 1}: {rec.data[e.start:e.start + 4]!r}",
                           path=path, line=rec.line, column=e.start + 1))
        text = rec.data.decode("utf-8", errors="replace")
        # keep checking the row with replacement characters: the other defects are still worth reporting
    _SEEN.hit = _SEEN.odd = False
    try:
        obj = _FLAGGING.decode(text)
    except json.JSONDecodeError as e:
        out.append(finding("D001", f"invalid JSON: {e.msg} (column {e.colno})", path=path, line=rec.line,
                           column=e.colno))
        return None, out
    if not _SEEN.hit:
        return obj, out
    obj = _DECODER.decode(text)
    for ptr, key in _walk_dups(obj):
        out.append(finding("D028", f"key {key!r} appears twice in the object at {ptr or '/'}; only the last value "
                                   "is kept", path=path, line=rec.line, pointer=f"{ptr}/{_escape(key)}"))
    return _plain(obj), out


def detect_format(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return None
    if "conversations" in obj:
        return "sharegpt"
    if "messages" in obj:
        return "openai"
    if "instruction" in obj and "output" in obj:
        return "alpaca"
    return None


def _alpaca_row(obj: dict, path: str, line: int) -> tuple[Conversation | None, list[Finding]]:
    """An Alpaca row → system (``system``), user (``instruction`` + ``ALPACA_JOIN`` + ``input``), assistant
    (``output``). Each message points at the field it came from (the user turn at ``/instruction``)."""
    out: list[Finding] = []
    for key in ("instruction", "output"):
        if key not in obj:
            out.append(finding("D007", f"Alpaca row has no {key!r} field (forced format alpaca)", path=path,
                               line=line))
    if out:
        return None, out
    texts: dict[str, str] = {}
    for key in ("system", "instruction", "input", "output"):
        v = obj.get(key)
        if v is None and key in ("system", "input"):
            continue
        if not isinstance(v, str):
            out.append(finding("D011", f"{key!r} is {_kind(v)}, expected a string", path=path, line=line,
                               pointer=f"/{key}"))
            continue
        texts[key] = v
    if "instruction" not in texts or "output" not in texts:
        return None, out
    messages = []
    if texts.get("system"):
        messages.append(Message("system", texts["system"], "/system", "system"))
    user = texts["instruction"] + (ALPACA_JOIN + texts["input"] if texts.get("input") else "")
    messages.append(Message("user", user, "/instruction", "instruction"))
    messages.append(Message("assistant", texts["output"], "/output", "output"))
    extra = _row_fields(obj, path, line, out)
    conv = Conversation(path=path, line=line, format="alpaca", messages=messages, key="", tools=extra.get("tools"),
                        documents=extra.get("documents"), template_kwargs=extra.get("chat_template_kwargs"))
    canon = "".join(f"{len(m.role)}:{m.role}{len(m.content)}:{m.content}" for m in messages)
    if not conv.plain:
        canon += json.dumps(extra, sort_keys=True, default=repr)
    conv.digest = hashlib.blake2b(canon.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return conv, out






def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(type(value), "number")


def _content_text(value: Any, pointer: str, path: str, line: int, out: list[Finding]) -> str | None:
    """The text the D checks read of a content that is not a plain string: the text parts of typed content joined
    (D024 says so); None (with D011) for a content of another type."""
    if isinstance(value, list) and value and all(isinstance(p, dict) and "type" in p for p in value):
        texts = [p["text"] for p in value if p.get("type") == "text" and isinstance(p.get("text"), str)]
        kinds = sorted({str(p.get("type")) for p in value})
        out.append(finding("D024", f"content is a list of typed parts ({', '.join(kinds)}); the template gets the "
                                   "list, the text checks read the joined text parts", path=path, line=line,
                           pointer=pointer))
        return "".join(texts)
    out.append(finding("D011", f"content is {_kind(value)}, expected a string", path=path, line=line,
                       pointer=pointer))
    return None


def _sharegpt_call(value: str, pointer: str, path: str, line: int, out: list[Finding]) -> list | None:
    """A ShareGPT ``function_call`` turn's value (a JSON object ``{"name", "arguments"}``, or a list of them) → the
    HF ``tool_calls`` list; None (with D043) when it is not one."""
    try:
        call = json.loads(value)
    except (json.JSONDecodeError, RecursionError) as e:
        out.append(finding("D043", f"function_call value is not JSON ({getattr(e, 'msg', type(e).__name__)}); "
                                   "expected {\"name\": ..., \"arguments\": {...}}", path=path, line=line,
                           pointer=pointer))
        return None
    calls = call if isinstance(call, list) else [call]
    if not calls or not all(isinstance(c, dict) for c in calls):
        out.append(finding("D043", "function_call value is not a call object {\"name\": ..., \"arguments\": ...}",
                           path=path, line=line, pointer=pointer))
        return None
    return [{"type": "function", "function": {"name": c.get("name"), "arguments": c.get("arguments", {})}}
            for c in calls]


def _row_fields(obj: dict, path: str, line: int, out: list[Finding]) -> dict[str, Any]:
    """The row's template arguments: ``tools`` (a list, or a JSON string holding one as ShareGPT tool datasets
    write it), ``documents`` (a list) and ``chat_template_kwargs`` (an object)."""
    got: dict[str, Any] = {}
    for key in ROW_FIELDS:
        if key not in obj or obj[key] is None:
            continue
        v = obj[key]
        if key == "tools" and isinstance(v, str):
            try:
                v = json.loads(v) if v.strip() else []
            except (json.JSONDecodeError, RecursionError) as e:
                out.append(finding("D047", f"'tools' is a string that is not JSON ({getattr(e, 'msg', e)})",
                                   path=path, line=line, pointer="/tools"))
                continue
        want = dict if key == "chat_template_kwargs" else list
        if not isinstance(v, want):
            out.append(finding("D047" if key != "chat_template_kwargs" else "D048",
                               f"{key!r} is {_kind(v)}, expected {'an object' if want is dict else 'a list'}",
                               path=path, line=line, pointer=f"/{key}"))
            continue
        got[key] = v
    return got


def parse_row(obj: Any, *, path: str, line: int, forced: str | None = None) -> tuple[Conversation | None, list[Finding]]:
    """Turn one decoded row into a Conversation; never raises on bad data."""
    out: list[Finding] = []
    if not isinstance(obj, dict):
        out.append(finding("D006", f"row is a JSON {_kind(obj)}, expected an object",
                           path=path, line=line))
        return None, out
    fmt = forced or detect_format(obj)
    if fmt is None:
        keys = ", ".join(sorted(map(str, obj))[:6]) or "none"
        out.append(finding("D007", f"row has no 'conversations' or 'messages' field, nor Alpaca's 'instruction' and "
                                   f"'output' (keys: {keys})", path=path, line=line,
                           hint="use --input-format if the file is ShareGPT or OpenAI under another shape"))
        return None, out
    if fmt == "alpaca":
        return _alpaca_row(obj, path, line)
    key, role_f, content_f = _FIELDS[fmt]
    if key not in obj:
        out.append(finding("D007", f"row has no {key!r} field (forced format {fmt})", path=path, line=line))
        return None, out
    turns = obj[key]
    if not isinstance(turns, list):
        out.append(finding("D008", f"{key!r} is {_kind(turns)}, expected a list of messages", path=path, line=line,
                           pointer=f"/{key}"))
        return None, out
    sharegpt = fmt == "sharegpt"
    messages: list[Message] = []
    usable = True
    styles: dict[str, str] = {}
    if sharegpt and isinstance(obj.get("system"), str) and obj["system"] and \
            not any(isinstance(m, dict) and m.get("from") == "system" for m in turns):
        # LLaMA-Factory's ShareGPT keeps the system prompt on the row
        messages.append(Message("system", obj["system"], "/system", "system"))
    for i, m in enumerate(turns):
        if type(m) is dict and len(m) == 2:   # the common case first: role and string content only, a known role
            raw_role, c = m.get(role_f), m.get(content_f)
            if type(raw_role) is str and type(c) is str:
                role = SHAREGPT_ROLES.get(raw_role) if sharegpt else (raw_role if raw_role in KNOWN_ROLES else None)
                if role is not None and raw_role != "function_call":
                    if sharegpt and raw_role in _SHAREGPT_STYLE:
                        styles.setdefault(_SHAREGPT_STYLE[raw_role], raw_role)
                    messages.append(Message(role, c, f"/{key}/{i}/{content_f}", raw_role))
                    continue
        base = f"/{key}/{i}"
        if not isinstance(m, dict):
            out.append(finding("D009", f"message {i} is not an object", path=path, line=line, pointer=base))
            usable = False
            continue
        raw_role = m.get(role_f)
        has_calls = "tool_calls" in m and m["tool_calls"] is not None
        if role_f not in m or (content_f not in m and not has_calls):
            missing = [f for f in (role_f, content_f) if f not in m]
            other = _FIELDS["openai" if sharegpt else "sharegpt"]
            hint = ""
            if any(f in m for f in other[1:]):
                hint = f"this message uses {other[1]!r}/{other[2]!r}, the other format's field names"
            out.append(finding("D010", f"message {i} has no {' or '.join(map(repr, missing))} field", path=path,
                               line=line, pointer=base, hint=hint))
            usable = False
            continue
        if not isinstance(raw_role, str):
            out.append(finding("D011", f"role is {_kind(raw_role)}, expected a string", path=path, line=line,
                               pointer=f"{base}/{role_f}"))
            usable = False
            continue
        if sharegpt:
            role = SHAREGPT_ROLES.get(raw_role) or SHAREGPT_ROLES.get(raw_role.strip().lower())
            if role is None:
                out.append(finding("D012", f"unknown ShareGPT role {raw_role!r}", path=path, line=line,
                                   pointer=f"{base}/{role_f}",
                                   hint="ShareGPT names: " + ", ".join(sorted(SHAREGPT_ROLES))))
                usable = False
                continue
            low = raw_role.strip().lower()
            if low in _SHAREGPT_STYLE:
                styles.setdefault(_SHAREGPT_STYLE[low], raw_role)
        else:
            role = raw_role
            if role not in KNOWN_ROLES:
                near = SHAREGPT_ROLES.get(role.strip().lower())
                out.append(finding("D012", f"role {role!r} is rendered as written: no chat template knows it",
                                   path=path, line=line, pointer=f"{base}/{role_f}",
                                   hint=(f"did you mean {near!r}? " if near and near != role else "")
                                   + "known: " + ", ".join(sorted(KNOWN_ROLES))))
        ptr = f"{base}/{content_f}"
        c = m.get(content_f)
        fields: list[tuple[str, Any]] = [(k, v) for k, v in m.items() if k not in (role_f, content_f)]
        if sharegpt and raw_role.strip().lower() == "function_call" and isinstance(c, str):
            calls = _sharegpt_call(c, ptr, path, line, out)
            if calls is None:
                usable = False
                continue
            fields.append(("tool_calls", calls))
            c = ""
        if type(c) is str:
            text = c
        elif c is None and has_calls:
            text = ""   # a tool call without content: the template sees no content key (null or absent alike)
            fields.insert(0, ("content", None))
        else:
            text = _content_text(c, ptr, path, line, out)
            if text is None:
                usable = False
                continue
            fields.insert(0, ("content", c))
        messages.append(Message(role, text, ptr, raw_role, tuple(fields)))
    if len(styles) > 1:
        out.append(finding("D049", f"the row mixes ShareGPT role conventions ({styles['sharegpt']!r} and "
                                   f"{styles['openai']!r}); both are mapped by the same table, but the writer of "
                                   "this data may have meant something else", path=path, line=line,
                           pointer=f"/{key}"))
    extra = _row_fields(obj, path, line, out)
    conv = Conversation(path=path, line=line, format=fmt, messages=messages, key=f"/{key}", usable=usable,
                        tools=extra.get("tools"), documents=extra.get("documents"),
                        template_kwargs=extra.get("chat_template_kwargs"))
    # length-prefixed, so that no two different message lists give the same string
    canon = "".join(f"{len(m.role)}:{m.role}{len(m.content)}:{m.content}" for m in messages)
    if not conv.plain:
        canon += json.dumps([[m.fields for m in messages], extra], sort_keys=True, default=repr)
    conv.digest = hashlib.blake2b(canon.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return conv, out


def open_records(fh: IO[bytes], path: str | Path, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
                 display_path: str | None = None) -> tuple[bool, Iterator[_Record]]:
    """Split an open dataset file into raw records (bytes, not decoded): ``(is_array, records)``. Only the file's
    framing is done here (lines or list elements, BOM, CRLF, size limit); :func:`parse_record` does the rest, so that
    the two halves can run in different processes."""
    p = Path(path)
    shown = display_path or str(path)
    head = fh.read(4096)
    fh.seek(0)
    stripped = head.lstrip(_BOM).lstrip()
    suffix = p.suffix.lower()
    is_array = suffix == ".json" or (suffix not in (".jsonl", ".ndjson") and stripped.startswith(b"["))
    records = _iter_json_array(fh, shown, max_line_bytes) if is_array else _iter_lines(fh, shown, max_line_bytes)
    return is_array, records


def parse_record(line: int, data: bytes | None, found: list[Finding], *, path: str, is_array: bool,
                 input_format: str | None = None) -> Row:
    """One raw record (from :func:`open_records`) → a Row: decode, parse, and the row's ingest findings."""
    if data is None:
        return Row(line, None, found)
    if not is_array and not data.strip():
        return Row(line, None, found + [finding("D005", "blank line", path=path, line=line)])
    over = check_raw(data, path=path, line=line)   # depth and numbers no JSON decoder survives (D060, D062)
    if over:
        return Row(line, None, found + over)
    obj, more = _decode(_Record(line, data, found), path)
    if obj is None and more and more[-1].code == "D001":
        return Row(line, None, more)
    # keys, messages, string sizes (D061), NaN/Infinity and overflowing numbers the decoder saw (D062)
    over = check_decoded(obj, data, path=path, line=line, odd_numbers=_SEEN.odd)
    if over:
        return Row(line, None, more + over)
    conv, rest = parse_row(obj, path=path, line=line, forced=input_format)
    if conv is not None and not (b"</think>" in data or b"reasoning" in data or b"thinking" in data):
        conv.reasoning = False   # one scan of the row's bytes instead of one per content
    if conv is not None and any(f.code == "D002" for f in more):
        conv.replaced_bytes = True
    return Row(line, conv, more + rest)


def parse_object(line: int, obj: Any, found: list[Finding] | None = None, *, path: str,
                 input_format: str | None = None) -> Row:
    """One decoded row (a columnar or in-memory source's, ``validator/sources.py``) → a Row: the checks of
    :func:`parse_record` after decoding (the byte-level ones belong to JSONL)."""
    conv, rest = parse_row(obj, path=path, line=line, forced=input_format)
    return Row(line, conv, list(found or ()) + rest)


def read_rows(path: str | Path, *, input_format: str | None = None,
              max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, display_path: str | None = None) -> Iterator[Row]:
    """Stream rows from a JSONL or JSON-list file. File-level findings (blank lines...) ride on Row(conversation=None)."""
    shown = display_path or str(path)
    with open(Path(path), "rb") as fh:
        is_array, records = open_records(fh, path, max_line_bytes=max_line_bytes, display_path=shown)
        for rec in records:
            yield parse_record(rec.line, rec.data, rec.findings, path=shown, is_array=is_array,
                               input_format=input_format)


def usable_conversations(path: str | Path, limit: int | None = None) -> list[Conversation]:
    """The first ``limit`` (all with None) conversations of a JSONL/JSON file that can be rendered: rows that
    parse, with messages (what ``export`` and ``verify-model`` render the approved dataset with)."""
    out: list[Conversation] = []
    for row in read_rows(path):
        c = row.conversation
        if c is not None and c.usable and c.messages:
            out.append(c)
            if limit is not None and len(out) >= limit:
                break
    return out
