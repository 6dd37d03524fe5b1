"""Reporters by name. Each takes the gate's results and returns the text to print (rich only in ``text``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from tmplcheck.validator.gate import GateResult
from tmplcheck.validator.report import machine
from tmplcheck.validator.report.text import iter_text

#: each reporter yields its output in chunks, so a report on a huge dataset is never one string in memory
Reporter = Callable[..., Iterator[str]]

REPORTERS: dict[str, Reporter] = {
    "text": iter_text,
    "json": machine.iter_json,
    "jsonl": machine.iter_jsonl,
    "junit": machine.iter_junit,
    "sarif": machine.iter_sarif,
    "github": machine.iter_github,
}


def report_chunks(fmt: str, results: Sequence[GateResult], *, max_findings: int | None = None, **kw) -> Iterator[str]:
    return REPORTERS[fmt](results, max_findings=max_findings, **kw)


def report(fmt: str, results: Sequence[GateResult], *, max_findings: int | None = None, **kw) -> str:
    return "".join(report_chunks(fmt, results, max_findings=max_findings, **kw))
