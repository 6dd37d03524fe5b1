"""Snippets in messages show control characters escaped and every other character as itself (report.html and the
terminal printed `\\u2026` where `…` belonged)."""

from tmplcheck.validator.report.text import visible
from tmplcheck.validator.textshow import escape_controls


def test_only_controls_are_escaped():
    assert escape_controls("…ext|>…") == "…ext|>…"
    assert escape_controls("système\n…\t\x00\u2028") == "système\\n…\\t\\x00\\u2028"
    assert escape_controls("a\\b") == "a\\b"              # no controls: unchanged
    assert escape_controls("a\\b\n") == "a\\\\b\\n"        # with controls: a backslash is escaped too, unambiguous
    assert escape_controls("\ud800x") == "\\ud800x"        # a lone surrogate is made visible
    assert visible("café…\n", 80) == "café…\\n"
