"""The gate: stream a dataset through every stage's checks, collect all findings, and decide.

A *stage* sees each readable conversation once (``check``), may add file-level findings at the end (``finish``)
and contributes to the summary (``summary``). The dataset stage always runs; the template stage joins when a
template is given and the token stage when a tokenizer is given (they live in their own modules and are plugged in
through ``GateOptions``).
"""

from __future__ import annotations

import os
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tmplcheck import __version__
from tmplcheck.validator.checks.dataset import check_conversation
from tmplcheck.validator.codes import matches
from tmplcheck.validator.findings import Finding, Severity, finding
from tmplcheck.validator.store import FindingStore
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
        # exact duplicates: a 128-bit content digest and the line per row, 20 bytes a row, resolved at the end
        self._digests = array("Q")
        self._lines = array("L")
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
            d = bytes.fromhex(conv.digest)
            self._digests.extend((int.from_bytes(d[:8], "little"), int.from_bytes(d[8:16], "little")))
            self._lines.append(conv.line)
        yield from check_conversation(conv)

    def finish(self) -> Iterator[Finding]:
        if len(self._lines) < 2:
            return
        import numpy as np

        dig = np.frombuffer(self._digests, dtype=np.uint64).reshape(-1, 2)
        lines = np.frombuffer(self._lines, dtype=np.uint32 if self._lines.itemsize == 4 else np.uint64)
        order = np.lexsort((lines, dig[:, 1], dig[:, 0]))   # by digest, then by line
        d = dig[order]
        same = np.all(d[1:] == d[:-1], axis=1)
        if not same.any():
            return
        first = lines[order[0]]
        for k in range(1, len(order)):
            if same[k - 1]:
                yield finding("D020", f"row repeats line {int(first)} exactly", path=self.path,
                              line=int(lines[order[k]]))
            else:
                first = lines[order[k]]

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
    spill_at: int = 50_000  # findings kept in memory before sorted runs go to a temporary file
    progress: Callable[[int], None] | None = None  # called with the number of rows read so far


@dataclass
class GateResult:
    path: str
    findings: Sequence[Finding]     # a FindingStore for gate runs: sorted, bounded memory
    summary: dict[str, Any]

    @property
    def errors(self) -> int:
        if isinstance(self.findings, FindingStore):
            return self.findings.errors
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


def _rows_with_errors(findings: Iterable[Finding]) -> int:
    """Distinct lines with an error, in one streaming pass over the (sorted) findings."""
    n, last = 0, None
    for f in findings:
        if f.severity is Severity.ERROR and f.line and (f.path, f.line) != last:
            n += 1
            last = (f.path, f.line)
    return n


def run_gate(path: str | os.PathLike, opts: GateOptions | None = None, display_path: str | None = None) -> GateResult:
    opts = opts or GateOptions()
    shown = display_path or str(path)
    dataset = DatasetStage(shown)
    stages: list[Stage] = [dataset] + [make(shown) for make in opts.stages]
    out = FindingStore(spill_at=opts.spill_at)
    rows_with_conv = 0
    bad_rows = 0
    for row in read_rows(path, input_format=opts.input_format, max_line_bytes=opts.max_line_bytes,
                         display_path=shown):
        out.extend(f for f in row.findings if keep(f, opts))
        if row.conversation is None:
            if any(f.code != "D005" for f in row.findings):
                bad_rows += 1
            continue
        rows_with_conv += 1
        for st in stages:
            out.extend(f for f in st.check(row.conversation) if keep(f, opts))
        if opts.progress and rows_with_conv % 256 == 0:
            opts.progress(rows_with_conv)
    for st in stages:
        out.extend(f for f in st.finish() if keep(f, opts))
    if rows_with_conv == 0 and bad_rows == 0:
        empty = finding("D023", "the dataset holds no rows", path=shown)
        if keep(empty, opts):
            out.append(empty)
    kept = out
    by_sev = out.by_severity
    by_code = out.by_code
    rows_failed = _rows_with_errors(out)
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
