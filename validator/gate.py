"""The gate: stream a dataset through every stage's checks, collect all findings, and decide.

A *stage* sees each readable conversation once (``check``), may add file-level findings at the end (``finish``)
and contributes to the summary (``summary``). The dataset stage always runs; the template stage joins when a
template is given and the token stage when a tokenizer is given (they live in their own modules and are plugged in
through ``GateOptions``).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from tmplcheck import __version__
from tmplcheck.validator.checks.dataset import check_conversation
from tmplcheck.validator.codes import matches
from tmplcheck.validator.findings import Finding, Severity, finding
from tmplcheck.validator.ingest import DEFAULT_MAX_LINE_BYTES, Conversation, read_rows


class Stage(Protocol):
    name: str

    def check(self, conv: Conversation) -> Iterable[Finding]: ...

    def finish(self) -> Iterable[Finding]: ...

    def summary(self) -> dict[str, Any]: ...


class DatasetStage:
    """Row-level D checks plus the file-level ones: duplicates, mixed formats, empty file."""

    name = "dataset"

    def __init__(self, path: str):
        self.path = path
        self.seen: dict[str, int] = {}
        self.formats: Counter[str] = Counter()
        self.first_line_of: dict[str, int] = {}
        self.rows = 0
        self.turns: Counter[str] = Counter()

    def check(self, conv: Conversation) -> Iterator[Finding]:
        self.rows += 1
        self.formats[conv.format] += 1
        self.first_line_of.setdefault(conv.format, conv.line)
        for m in conv.messages:
            self.turns[m.role] += 1
        first = next(iter(self.formats))
        if conv.format != first:
            yield finding("D021", f"row is {conv.format} but the file started as {first} "
                                  f"(line {self.first_line_of[first]})", path=conv.path, line=conv.line,
                          pointer=conv.key)
        if conv.messages and conv.usable:
            prev = self.seen.get(conv.digest)
            if prev is not None:
                yield finding("D020", f"row repeats line {prev} exactly", path=conv.path, line=conv.line)
            else:
                self.seen[conv.digest] = conv.line
        yield from check_conversation(conv)

    def finish(self) -> Iterator[Finding]:
        return iter(())

    def summary(self) -> dict[str, Any]:
        return {"rows": self.rows, "formats": dict(self.formats), "turns": dict(self.turns)}


@dataclass
class GateOptions:
    input_format: str | None = None
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    select: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)
    #: factories for the extra stages (template, tokens): each gets the display path and returns a Stage
    stages: list[Callable[[str], Stage]] = field(default_factory=list)
    progress: Callable[[int], None] | None = None  # called with the number of rows read so far


@dataclass
class GateResult:
    path: str
    findings: list[Finding]
    summary: dict[str, Any]

    @property
    def errors(self) -> int:
        return sum(1 for f in self.findings if f.severity is Severity.ERROR)

    @property
    def passed(self) -> bool:
        return self.errors == 0

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1


def keep(f: Finding, opts: GateOptions) -> bool:
    if opts.select and not matches(f.code, opts.select):
        return False
    if opts.ignore and matches(f.code, opts.ignore):
        return False
    return True


def run_gate(path: str | os.PathLike, opts: GateOptions | None = None, display_path: str | None = None) -> GateResult:
    opts = opts or GateOptions()
    shown = display_path or str(path)
    dataset = DatasetStage(shown)
    stages: list[Stage] = [dataset] + [make(shown) for make in opts.stages]
    out: list[Finding] = []
    rows_with_conv = 0
    bad_rows = 0
    for row in read_rows(path, input_format=opts.input_format, max_line_bytes=opts.max_line_bytes,
                         display_path=shown):
        out.extend(row.findings)
        if row.conversation is None:
            if any(f.code != "D005" for f in row.findings):
                bad_rows += 1
            continue
        rows_with_conv += 1
        for st in stages:
            out.extend(st.check(row.conversation))
        if opts.progress and rows_with_conv % 256 == 0:
            opts.progress(rows_with_conv)
    for st in stages:
        out.extend(st.finish())
    if rows_with_conv == 0 and bad_rows == 0:
        out.append(finding("D023", "the dataset holds no rows", path=shown))
    kept = sorted((f for f in out if keep(f, opts)), key=Finding.sort_key)
    by_sev = Counter(f.severity.value for f in kept)
    by_code = Counter(f.code for f in kept)
    rows_failed = len({f.line for f in kept if f.severity is Severity.ERROR and f.line})
    summary: dict[str, Any] = {
        "path": shown,
        "tmplcheck_version": __version__,
        "rows": rows_with_conv + bad_rows,
        "rows_read": rows_with_conv,
        "rows_unreadable": bad_rows,
        "rows_with_errors": rows_failed,
        "errors": by_sev.get("error", 0),
        "warnings": by_sev.get("warning", 0),
        "infos": by_sev.get("info", 0),
        "by_code": dict(sorted(by_code.items())),
        "passed": by_sev.get("error", 0) == 0,
    }
    for st in stages:
        summary[st.name] = st.summary()
    return GateResult(shown, kept, summary)
