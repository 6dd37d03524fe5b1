"""Reporters by name. Each takes the gate's results and returns the text to print (rich only in ``text``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tmplcheck.validator.gate import GateResult
from tmplcheck.validator.report import machine
from tmplcheck.validator.report.text import render_text

Reporter = Callable[..., str]

REPORTERS: dict[str, Reporter] = {
    "text": render_text,
    "json": machine.render_json,
    "jsonl": machine.render_jsonl,
    "junit": machine.render_junit,
    "sarif": machine.render_sarif,
    "github": machine.render_github,
}


def report(fmt: str, results: Sequence[GateResult], *, max_findings: int | None = None, **kw) -> str:
    return REPORTERS[fmt](results, max_findings=max_findings, **kw)
