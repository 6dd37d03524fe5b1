"""Snippets of data in messages: control characters made visible, every other character shown as itself.

``str.encode("unicode_escape")`` escapes every non-ASCII character too, so a message quoting ``…`` or ``é``
printed ``\\u2026`` / ``\\xe9`` in the terminal and in report.html. :func:`escape_controls` escapes only what a
reader cannot see (C0/C1 controls, DEL, lone surrogates, line and paragraph separators) and keeps the rest.
"""

from __future__ import annotations

import re

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _one(c: str) -> str:
    if c in _NAMED:
        return _NAMED[c]
    o = ord(c)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def has_controls(s: str) -> bool:
    return _CONTROL.search(s) is not None


def escape_controls(s: str) -> str:
    """``s`` with control characters (and, when there are any, backslashes) written as Python escapes; a string
    without control characters is returned unchanged."""
    if not has_controls(s):
        return s
    return re.sub(r"[\\\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]", lambda m: _one(m.group()), s)
