"""The gate: stream a dataset through every stage's checks, collect all findings, and decide.

A *stage* sees each readable conversation once (``check``), may add file-level findings at the end (``finish``)
and contributes to the summary (``summary``). The dataset stage always runs; the template stage joins when a
template is given and the token stage when a tokenizer is given (they live in their own modules and are plugged in
through ``GateOptions``).

Rows flow through the gate in chunks of raw records (bytes). The per-row work, which is pure per row — decoding
JSON, parsing the row, the row's D checks, rendering and tokenizing — is a *chunk worker*'s job; the order-dependent
bookkeeping (duplicates, mixed formats, counters, the template stage's poisoning) is each stage's ``take``, fed in
row order with a small :class:`RowInfo` per row and that row's worker payload. A file of more than one chunk runs
its chunk workers on a process pool (``validator/parallel.py``) while the gate's process only reads the file; a
smaller one runs them in the gate's process. The same functions run in both cases, so the findings and the summary
do not depend on where they ran.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import operator
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
from tmplcheck.validator.ingest import DEFAULT_MAX_LINE_BYTES, Conversation, open_records, parse_object, parse_record


class Stage(Protocol):
    name: str

    def check(self, conv: Conversation) -> Iterable[Finding]: ...

    def finish(self) -> Iterable[Finding]: ...

    def summary(self) -> dict[str, Any]: ...


class ChunkWorker(Protocol):
    """A stage's per-row work: ``convs`` (``None`` for rows that could not be read) and their record ordinals in,
    one picklable payload per row out (``None`` where there is nothing to say)."""

    def process(self, convs: Sequence[Conversation | None], ordinals: Sequence[int]) -> list[Any]: ...


class SplitStage(Stage, Protocol):
    """A stage whose per-row work can run away from the gate's process (every built-in stage is one)."""

    def prepare(self) -> Iterable[Finding]: ...          # once, before any row (and before workers fork)

    def chunk_worker(self) -> ChunkWorker | None: ...

    def take(self, info: "RowInfo", payload: Any) -> Iterable[Finding]: ...   # in row order, every readable row


@dataclass(frozen=True)
class RowInfo:
    """What the gate's process keeps of a readable row: enough for the order-dependent checks."""

    line: int
    format: str
    key: str
    usable: bool
    roles: tuple[str, ...]
    digest: bytes
    reasoning: bool = False   # an assistant turn carries reasoning (a reasoning field or a <think> block)

    @classmethod
    def of(cls, conv: Conversation) -> "RowInfo":
        return cls(conv.line, conv.format, conv.key, conv.usable, tuple(m.role for m in conv.messages), conv.digest,
                   conv.has_reasoning())


class CleanRows:
    """Consecutive readable rows of one chunk with nothing to say but their counts: no finding of their own, the
    dataset checks' payload empty, the token stage's a clean regular row's numbers (``RowPipeline._finish``), each
    with its conversation shape's shared llama.cpp comparison. ``_ChunkWork`` ships them as columns instead of a tuple
    a row; ``GateRun.feed`` gives them to each stage's ``take_clean`` at once (or, for a stage without one, row by row
    through :meth:`rows`, which gives back exactly the tuples ``_ChunkWork`` would have made). Rows of different
    shapes share a block (a file mixing shapes row by row would otherwise make blocks of a few rows); what is taken
    per shape is taken for all its rows at once (:meth:`shapes`; ``GateRun.add_shared`` keeps file order where it
    matters)."""

    def __init__(self, kinds: tuple, filled_none: bool):
        self.kinds = kinds          # per chunk worker: None (no payload), "empty" ([]), "clean" (the 5-tuple)
        self.filled_none = filled_none
        self.crosses: list[Any] = []   # each row's shape's shared llama.cpp findings (the 5-tuple's last field)
        self.lines: list[int] = []
        self.formats: list[str] = []
        self.keys: list[str] = []
        self.roles: list[tuple[str, ...]] = []
        self.reasoning: list[bool] = []
        self.digests = bytearray()
        self.tokens: list[int] = []
        self.trained: list[int] = []
        self.sampled: list[int] = []
        self.filled: list[Any] = []
        self._same: dict = {}   # one object for equal keys and role tuples: pickled once a block, then referenced

    def __len__(self) -> int:
        return len(self.lines)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_same"] = {}
        return state

    def add(self, info: "RowInfo", clean: tuple) -> None:
        same = self._same.setdefault
        self.lines.append(info.line)
        self.formats.append(info.format)
        self.keys.append(same(info.key, info.key))
        self.roles.append(same(info.roles, info.roles))
        self.reasoning.append(info.reasoning)
        self.digests += _digest16(info.digest)
        tokens, trained, sampled, filled, cross = clean
        self.tokens.append(tokens)
        self.trained.append(trained)
        self.sampled.append(sampled)
        self.filled.append(filled)
        self.crosses.append(cross)

    def shapes(self) -> list[tuple[Any, list[int] | None]]:
        """``(cross, rows)`` for each shared comparison of the block (the same object: a chunk worker's shape cache
        hands one object to every row of a shape; pickling keeps that), in the order of their first rows; ``rows``
        the indices of its rows in order, None when it is every row."""
        crosses = self.crosses
        first = crosses[0] if crosses else None
        if all(c is first for c in crosses):
            return [(first, None)] if crosses else []
        at: dict[int, tuple[Any, list[int]]] = {}
        for k, c in enumerate(crosses):
            got = at.get(id(c))
            if got is None:
                at[id(c)] = (c, [k])
            else:
                got[1].append(k)
        return list(at.values())

    def rows(self) -> Iterator[tuple]:
        """The rows as ``_ChunkWork`` makes them one by one: ``(findings, RowInfo, payloads, None)``."""
        for k, line in enumerate(self.lines):
            info = RowInfo(line, self.formats[k], self.keys[k], True, self.roles[k],
                           bytes(self.digests[16 * k:16 * k + 16]), self.reasoning[k])
            clean = (self.tokens[k], self.trained[k], self.sampled[k], self.filled[k], self.crosses[k])
            yield [], info, [None if kind is None else [] if kind == "empty" else clean for kind in self.kinds], None


def _digest16(d: bytes) -> bytes:
    """A row digest's first 128 bits, as the duplicate check stores them (16 bytes a row)."""
    return d if len(d) == 16 else d[:16].ljust(16, b"\0")


def _clean_kinds(payloads: list) -> tuple | None:
    """What each payload of a row is, when the row can travel in a :class:`CleanRows`; None when it cannot."""
    kinds = []
    for p in payloads:
        if p is None:
            kinds.append(None)
        elif type(p) is list and not p:
            kinds.append("empty")
        elif type(p) is tuple and len(p) == 5:
            kinds.append("clean")
        else:
            return None
    return tuple(kinds) if kinds.count("clean") == 1 else None


class _DatasetWork:
    def __init__(self, tools: Any = None, train_on: str | None = None):
        self.tools = tools
        self.train_on = train_on

    def process(self, convs, ordinals):
        return [None if c is None else list(check_conversation(c, tools=self.tools, train_on=self.train_on))
                for c in convs]


class DatasetStage:
    """Row-level D checks plus the file-level ones: duplicates, mixed formats, empty file."""

    name = "dataset"

    def __init__(self, path: str, tools: Any = None, train_on: str | None = None):
        self.path = path
        self.tools = tools   # the tools rows without their own are rendered with (``--tools``)
        self.train_on = train_on   # ``--train-on``: the assistant turns trained when a message has no flag
        self.reasoning_rows = 0
        self.first_reasoning: int | None = None
        self.plain_rows = 0
        self.first_plain: int | None = None
        # exact duplicates: a 128-bit content digest and the line per row, 20 bytes a row, resolved at the end
        self._digests = bytearray()   # 16 bytes a row: the digest's first 128 bits
        self._lines = array("L")
        self.formats: Counter[str] = Counter()
        self.first_line_of: dict[str, int] = {}
        self._first_format: str | None = None
        self._last_format: str | None = None
        self.rows = 0
        self._role_seqs: Counter[tuple[str, ...]] = Counter()

    def check(self, conv: Conversation) -> Iterator[Finding]:
        yield from self.take(RowInfo.of(conv), list(check_conversation(conv, tools=self.tools,
                                                                       train_on=self.train_on)))

    def prepare(self) -> list[Finding]:
        return []

    def chunk_worker(self) -> _DatasetWork:
        return _DatasetWork(self.tools, self.train_on)

    def take(self, info: RowInfo, payload: list[Finding] | None) -> list[Finding]:
        out: list[Finding] = []
        self.rows += 1
        self._count([info.line], [info.format], [info.key], [info.roles], [info.reasoning], info.usable, out)
        if info.roles and info.usable:
            self._digests += _digest16(info.digest)
            self._lines.append(info.line)
        if payload:
            out.extend(payload)
        return out

    def take_clean(self, block: CleanRows, kind: str | None) -> tuple[list[Finding], None]:
        """``take(info, [])`` for each row of ``block`` (usable rows with messages, no payload findings)."""
        out: list[Finding] = []
        self._count(block.lines, block.formats, block.keys, block.roles, block.reasoning, True, out)
        self.rows += len(block)
        self._digests += block.digests
        self._lines.extend(block.lines)
        return out, None

    def _count(self, lines: Sequence[int], fmts: list[str], keys: Sequence[str], roles: Sequence[tuple[str, ...]],
               reasoning: Sequence[bool], usable: bool, out: list[Finding]) -> None:
        """Rows' formats, turns and reasoning counts, in file order (columns, one entry a row); D021 into ``out``
        for each row whose format is not the file's first."""
        n = len(lines)
        fmt = fmts[0]
        if fmt == self._last_format and fmt == self._first_format and fmts.count(fmt) == n:
            self.formats[fmt] += n   # (the common case: the file's one format, seen already)
        else:
            for line, fmt, key in zip(lines, fmts, keys):
                if fmt != self._last_format:
                    if fmt not in self.formats:
                        self.first_line_of[fmt] = line
                    if self._first_format is None:
                        self._first_format = fmt
                    self._last_format = fmt
                self.formats[fmt] += 1
                if fmt != self._first_format:
                    first = self._first_format
                    out.append(finding("D021", f"row is {fmt} but the file started as {first} "
                                               f"(line {self.first_line_of[first]})", path=self.path, line=line,
                                       pointer=key))
        self._role_seqs.update(roles)    # the turns counted per role at the end
        if not usable:
            return
        answered = {r: "assistant" in r for r in set(roles)}
        asst = list(map(answered.__getitem__, roles))   # rows with an assistant turn
        think = list(map(bool, reasoning))
        with_reasoning = sum(itertools.compress(think, asst))
        without = sum(asst) - with_reasoning
        self.reasoning_rows += with_reasoning
        self.plain_rows += without
        if self.first_reasoning is None and with_reasoning:
            self.first_reasoning = next(itertools.compress(lines, map(operator.and_, asst, think)))
        if self.first_plain is None and without:
            self.first_plain = next(itertools.compress(lines, map(operator.gt, asst, think)))

    @property
    def turns(self) -> Counter[str]:
        """Messages per role over the rows taken."""
        out: Counter[str] = Counter()
        for roles, n in self._role_seqs.items():
            for r in roles:
                out[r] += n
        return out

    def finish(self) -> Iterator[Finding]:
        if self.reasoning_rows and self.plain_rows:
            n = self.reasoning_rows + self.plain_rows
            yield finding("D050", f"{self.reasoning_rows} of {n} rows ({100 * self.reasoning_rows / n:.1f} %) carry "
                                  f"reasoning (first: line {self.first_reasoning}), {self.plain_rows} "
                                  f"({100 * self.plain_rows / n:.1f} %) do not (first: line {self.first_plain})",
                          path=self.path, data={"reasoning_rows": self.reasoning_rows, "plain_rows": self.plain_rows})
        yield from self._duplicates()

    def _duplicates(self) -> Iterator[Finding]:
        if len(self._lines) < 2:
            return
        import numpy as np

        dig = np.frombuffer(bytes(self._digests), dtype="<u8").reshape(-1, 2)
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
        return {"rows": self.rows, "formats": dict(self.formats), "turns": dict(self.turns),
                "reasoning_rows": self.reasoning_rows}


@dataclass
class GateOptions:
    input_format: str | None = None
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    #: ``--train-on``: the assistant turns trained when a message has no flag of its own (validator/training_flags.py)
    train_on: str | None = None
    #: template arguments for rows without their own (``--tools``, ``--documents``, ``--template-kwargs``)
    render_defaults: dict[str, Any] = field(default_factory=dict)
    select: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)
    #: factories for the extra stages (template, tokens): each gets the display path and returns a Stage
    stages: list[Callable[[str], Stage]] = field(default_factory=list)
    spill_at: int = 50_000  # findings kept in memory before sorted runs go to a temporary file
    #: processes for the per-row work; None: the largest ``jobs`` a stage asks for (the token stage: every core),
    #: else 1. A file of more than one chunk of ``chunk_rows`` records runs on the process pool when this is > 1.
    jobs: int | None = None
    chunk_rows: int = 512
    #: ship runs of clean rows from the chunk workers as columns (``CleanRows``); False: one tuple a row (the same
    #: findings and summary, ``tests/test_clean_rows.py``)
    clean_rows: bool = True
    progress: Callable[[int], None] | None = None  # called with the number of rows read so far
    #: report each per-file code (``Rule.per_file``) once per file with its row count (False: once per row)
    fold_per_file: bool = True
    #: code -> (severity, note): findings of that code get this severity and the note appended to their message,
    #: before select/ignore and folding (``check --for-train`` makes K005 an info this way)
    severity: dict[str, tuple[Severity, str]] = field(default_factory=dict)


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


class PerFileFolder:
    """Findings of per-file codes (``Rule.per_file``: a property of the template/tokenizer pair, such as X001 or
    K005) folded into one finding per code and severity, carrying the number of rows it applies to and the first
    line numbers; the lines of folded errors are kept (an array, 8 bytes a row) so that ``rows_with_errors`` still
    counts every row. Findings without a line (template-level ones) pass through unchanged."""

    SHOW_LINES = 5
    _MAX_MESSAGES = 64
    #: name the rows by their 0-based index (``row 0, 1``) instead of their line: a parquet/Arrow/in-memory source,
    #: whose findings are located as ``row N`` (``validator/sources.py``); ``data.lines`` stays 1-based
    row_index = False

    def __init__(self) -> None:
        self._groups: dict[tuple[str, Severity], list] = {}   # (first finding, rows, lines shown, messages)
        self.error_lines = array("Q")

    @staticmethod
    def applies(f: Finding) -> bool:
        return bool(f.line) and PerFileFolder.applies_to(f.code)

    @staticmethod
    def applies_to(code: str) -> bool:
        """Findings of this code (with a line) are folded per file."""
        from tmplcheck.validator.codes import RULES

        rule = RULES.get(code)
        return rule is not None and rule.per_file

    def add(self, f: Finding) -> None:
        self.add_at(f, f.path, (f.line,))

    def shown(self, f: Finding) -> int:
        """How many lines the folded finding of ``f``'s code and severity shows so far."""
        g = self._groups.get((f.code, f.severity))
        return 0 if g is None else len(g[2])

    def add_at(self, f: Finding, path: str, lines: Sequence[int]) -> None:
        """``add`` of ``f`` located at each of ``lines`` (in that order), without making each copy."""
        g = self._groups.get((f.code, f.severity))
        if g is None:
            from tmplcheck.validator.template_stage import located

            first = f if (f.path, f.line) == (path, lines[0]) else located([f], path, lines[0])[0]
            g = self._groups[(f.code, f.severity)] = [first, 0, [], set()]
        g[1] += len(lines)
        shown = g[2]
        for line in lines:
            if len(shown) >= self.SHOW_LINES:
                break
            if line not in shown:
                shown.append(line)
        if len(g[3]) < self._MAX_MESSAGES:
            g[3].add(f.message)
        if f.severity is Severity.ERROR:
            self.error_lines.extend(lines)

    def findings(self) -> list[Finding]:
        out = []
        for first, n, lines, messages in self._groups.values():
            shown = ", ".join(str(x - 1 if self.row_index else x) for x in lines) + (", …" if n > len(lines) else "")
            unit = ("row" if self.row_index else "line") + ("s" if len(lines) > 1 else "")
            other = len(messages) - 1
            more = (f"; {other}{'+' if len(messages) >= self._MAX_MESSAGES else ''} other wording"
                    f"{'s' if other != 1 else ''} (first shown)") if other > 0 else ""
            rows = f"{n} row{'s' if n != 1 else ''}"
            out.append(dataclasses.replace(
                first, message=f"{first.message} [per file: {rows}, {unit} {shown}{more}]",
                data={**first.data, "rows": n, "lines": list(lines)}))
        return out

    def rows(self) -> dict[str, int]:
        by: dict[str, int] = {}
        for (code, _sev), g in self._groups.items():
            by[code] = by.get(code, 0) + g[1]
        return dict(sorted(by.items()))


def keep(f: Finding, opts: GateOptions) -> bool:
    if opts.select and not matches(f.code, opts.select):
        return False
    if opts.ignore and matches(f.code, opts.ignore):
        return False
    return True


def _rows_with_errors(findings: Iterable[Finding], folded_lines: Sequence[int] = (), path: str | None = None) -> int:
    """Distinct lines of the dataset with an error, in one streaming pass over the (sorted) findings, plus the lines
    of folded per-file errors (``PerFileFolder.error_lines``). Findings located in another file (the template
    audit's, at the template's lines) are not rows."""
    n, last = 0, None
    lines = array("Q")
    for f in findings:
        if f.severity is Severity.ERROR and f.line and (f.path, f.line) != last and (path is None or f.path == path):
            n += 1
            last = (f.path, f.line)
            if folded_lines:
                lines.append(f.line)
    if not folded_lines:
        return n
    import numpy as np

    return int(np.union1d(np.asarray(lines, dtype=np.uint64), np.asarray(folded_lines, dtype=np.uint64)).size)


class _ChunkWork:
    """The per-row work of one chunk of raw records: parse, then every stage's chunk worker. Runs in the gate's
    process (small files) or in a worker process (``validator/parallel.py``)."""

    def __init__(self, path: str, is_array: bool, input_format: str | None, workers: list, keep_conv: bool,
                 objects: bool = False):
        self.path, self.is_array, self.input_format = path, is_array, input_format
        self.workers = workers
        self.keep_conv = keep_conv
        self.objects = objects   # records carry decoded rows (validator/sources.py), not a JSONL record's bytes
        self.clean_rows = False  # ship runs of clean rows as ``CleanRows`` (set by ``GateRun.work``)

    def process(self, recs: Sequence[tuple[int, Any, list[Finding]]], first: int) -> list[tuple]:
        if self.objects:
            rows = [parse_object(line, obj, found, path=self.path, input_format=self.input_format)
                    for line, obj, found in recs]
        else:
            rows = [parse_record(line, data, found, path=self.path, is_array=self.is_array,
                                 input_format=self.input_format) for line, data, found in recs]
        convs = [r.conversation for r in rows]
        ordinals = range(first, first + len(rows))
        payloads = [w.process(convs, ordinals) if w is not None else None for w in self.workers]
        out: list = []
        block: CleanRows | None = None
        blocks = self.clean_rows and not self.keep_conv
        for k, (row, conv) in enumerate(zip(rows, convs)):
            if conv is None:
                out.append((row.findings, None, None, None))
                block = None
                continue
            info = RowInfo.of(conv)
            pl = [p[k] if p is not None else None for p in payloads]
            if blocks and not row.findings and info.usable and info.roles:
                kinds = _clean_kinds(pl)
                if kinds is not None:
                    clean = pl[kinds.index("clean")]
                    if block is None or block.kinds != kinds or block.filled_none != (clean[3] is None):
                        block = CleanRows(kinds, clean[3] is None)
                        out.append(block)
                    block.add(info, clean)
                    continue
            out.append((row.findings, info, pl, conv if self.keep_conv else None))
            block = None
        return out


def _chunks(records, size: int) -> Iterator[tuple[list, int]]:
    buf: list = []
    first = 0
    for rec in records:
        buf.append((rec.line, rec.data, rec.findings))
        if len(buf) >= size:
            yield buf, first
            first += len(buf)
            buf = []
    if buf:
        yield buf, first


def _results(chunks: Iterator[tuple[list, int]], work: _ChunkWork, jobs: int) -> Iterator[tuple]:
    """Every row's result, in file order: in this process for a file of one chunk (or ``jobs`` 1), else on a
    process pool started as soon as a second chunk exists."""
    from tmplcheck.validator.parallel import ChunkPool, fork_available

    head = list(itertools.islice(chunks, 2))
    if len(head) < 2 or jobs <= 1 or work.keep_conv or not fork_available():
        for chunk, first in itertools.chain(head, chunks):
            yield from work.process(chunk, first)
        return
    pool = ChunkPool(work, jobs)
    try:
        for chunk, first in itertools.chain(head, chunks):
            for res in pool.submit(chunk, first):
                yield from res
        for res in pool.drain():
            yield from res
    finally:
        pool.close()


def run_gate(path: str | os.PathLike, opts: GateOptions | None = None, display_path: str | None = None) -> GateResult:
    run = GateRun(display_path or str(path), opts)
    with open(path, "rb") as fh:
        is_array, records = open_records(fh, path, max_line_bytes=run.opts.max_line_bytes, display_path=run.path)
        work = run.work(is_array)
        run.feed(_results(_chunks(records, max(1, run.opts.chunk_rows)), work, run.jobs))
    return run.result()


def run_source(source, opts: GateOptions | None = None) -> GateResult:
    """The gate over a ``validator/sources.py`` Source (parquet, Arrow, a save_to_disk folder, a cached dataset id,
    in-memory rows; a JSONL file too): the same stages and decisions as :func:`run_gate`. Findings on rows of a
    columnar or in-memory source carry where the row is (``row``, and ``file``/``row_group`` where the source has
    them) in their ``data``; the summary says what the source was (``source``)."""
    run = source_run(source, opts)
    run.feed(_results(_chunks(source.records(), max(1, run.opts.chunk_rows)), source_work(run, source), run.jobs))
    return source_result(run, source)


def source_run(source, opts: GateOptions | None = None) -> "GateRun":
    """A source's ``GateRun``: findings on rows of a located source carry where the row is."""
    run = GateRun(source.path, opts)
    if source.located:
        add = run.add
        where = source.where

        def add_located(found: Iterable[Finding]) -> None:
            add(dataclasses.replace(f, data={**f.data, **where(f.line)}) if f.line else f for f in found)

        run.add = add_located   # type: ignore[method-assign]
        run.clean_ok = False      # every finding goes through add_located, row by row
        run.folder.row_index = True
    return run


def source_work(run: "GateRun", source) -> "_ChunkWork":
    work = run.work(source.is_array)
    work.objects = source.objects
    return work


def source_result(run: "GateRun", source) -> GateResult:
    res = run.result()
    res.summary["source"] = source.describe()
    return res


class GateRun:
    """One file's gate, in three steps: set-up (the stages, their ``prepare``), ``feed`` (every row's chunk-worker
    result, in file order: the order-dependent ``take`` of each stage, the per-file folding, the finding store) and
    ``result`` (each stage's ``finish``, the summary). :func:`run_gate` feeds it the local results (this process or
    the process pool); ``tmplcheck.ray_engine`` feeds it the same ``_ChunkWork``'s results computed as Ray Data
    tasks, so both engines share every decision after the per-row work."""

    def __init__(self, shown: str, opts: GateOptions | None = None):
        self.opts = opts = opts or GateOptions()
        self.path = shown
        self._per_file: dict[str, bool] = {}   # code -> folded per file (``PerFileFolder.applies_to``)
        self.clean_ok = True   # runs of clean rows may come as ``CleanRows`` (not when ``add`` is wrapped)
        self.stages: list[Stage] = [DatasetStage(shown, tools=opts.render_defaults.get("tools"),
                                                                train_on=opts.train_on)] + [
            make(shown) for make in opts.stages]
        self.split = [all(hasattr(st, a) for a in ("prepare", "chunk_worker", "take")) for st in self.stages]
        self.out = FindingStore(spill_at=opts.spill_at)
        self.folder = PerFileFolder()
        for st, sp in zip(self.stages, self.split):
            if sp:
                self.add(st.prepare())
        self.workers = [st.chunk_worker() if sp else None for st, sp in zip(self.stages, self.split)]
        self.jobs = opts.jobs if opts.jobs is not None else max([getattr(st, "jobs", 1) or 1 for st in self.stages])
        self.rows_with_conv = 0
        self.bad_rows = 0

    @property
    def all_split(self) -> bool:
        """Every stage's row work runs in chunk workers (else ``check`` needs each row's conversation here)."""
        return all(self.split)

    def work(self, is_array: bool) -> _ChunkWork:
        work = _ChunkWork(self.path, is_array, self.opts.input_format, self.workers, keep_conv=not self.all_split)
        work.clean_rows = self.opts.clean_rows and self.takes_clean
        return work

    @property
    def takes_clean(self) -> bool:
        """Runs of clean rows can be taken as ``CleanRows`` (every stage has ``take_clean``; ``add`` not wrapped)."""
        return self.clean_ok and self.all_split and all(hasattr(st, "take_clean") for st in self.stages)

    def _admit(self, f: Finding) -> tuple[Finding, bool] | None:
        """The finding as this run keeps it (``--severity``-style overrides applied) and whether its code is folded
        per file; None when select/ignore drop it."""
        opts = self.opts
        if opts.severity and f.code in opts.severity:
            sev, note = opts.severity[f.code]
            f = dataclasses.replace(f, severity=sev, message=f"{f.message} ({note})" if note else f.message)
        if (opts.select or opts.ignore) and not keep(f, opts):
            return None
        fold = self._per_file.get(f.code)
        if fold is None:
            fold = self._per_file[f.code] = opts.fold_per_file and self.folder.applies_to(f.code)
        return f, fold

    def add(self, found: Iterable[Finding]) -> None:
        if not found:
            return
        admit = self._admit
        for f in found:
            got = admit(f)
            if got is None:
                continue
            f, fold = got
            if fold and f.line:
                self.folder.add(f)
            else:
                self.out.append(f)

    def feed(self, results: Iterable[tuple]) -> None:
        """Take every row's ``_ChunkWork`` result, in file order."""
        opts = self.opts
        stages = [(st.take, True) if sp else (st.check, False) for st, sp in zip(self.stages, self.split)]
        clean = self.takes_clean
        n = self.rows_with_conv
        for item in results:
            if type(item) is CleanRows:
                if clean:
                    self._take_clean(item)
                    before, n = n, n + len(item)
                    self.rows_with_conv = n
                    if opts.progress and before // 256 != n // 256:
                        opts.progress(n)
                    continue
                self.feed(item.rows())
                n = self.rows_with_conv
                continue
            found, info, payloads, conv = item
            if found:
                self.add(found)
            if info is None:
                if any(f.code != "D005" for f in found):
                    self.bad_rows += 1
                continue
            n += 1
            self.rows_with_conv = n
            for (take, sp), payload in zip(stages, payloads):
                got = take(info, payload) if sp else take(conv)
                if got:
                    self.add(got)
            if opts.progress and n % 256 == 0:
                opts.progress(n)

    def _take_clean(self, block: CleanRows) -> None:
        """A :class:`CleanRows` through every stage's ``take_clean``: findings, or a shape's shared findings to be
        located at many rows."""
        for st, kind in zip(self.stages, block.kinds):
            found, shared = st.take_clean(block, kind)
            if found:
                self.add(found)
            if shared:
                self.add_shared(shared)

    def add_shared(self, groups: Sequence[tuple[Sequence[Finding], Sequence[int]]]) -> None:
        """``add_at`` of several shapes' shared findings, each at its rows (ascending lines, no line in two groups),
        as calls in file order would make them. Per-file folding shows the first lines of a code in the order they
        come: a group at a time is the same only once every folded code of the groups shows all the lines it
        shows; before that (a file's first rows) the rows are added in file order, a run of one shape at a time."""
        if len(groups) == 1 or self._order_free(groups):
            for shared, lines in groups:
                self.add_at(shared, lines)
            return
        merged = heapq.merge(*[[(line, g) for line in lines] for g, (_, lines) in enumerate(groups)])
        for g, run in itertools.groupby(merged, key=lambda x: x[1]):
            self.add_at(groups[g][0], [line for line, _ in run])

    def _order_free(self, groups: Sequence[tuple[Sequence[Finding], Sequence[int]]]) -> bool:
        shown = self.folder.shown
        for shared, lines in groups:
            if not all(lines):
                return False
            for f in shared:
                got = self._admit(f)
                if got is not None and got[1] and shown(got[0]) < PerFileFolder.SHOW_LINES:
                    return False
        return True

    def add_at(self, shared: Sequence[Finding], lines: Sequence[int]) -> None:
        """``add`` of each of ``shared`` (findings without a place: a conversation shape's) located at each of
        ``lines``, as one call per finding and line would (severity overrides, select/ignore, per-file folding)."""
        from tmplcheck.validator.template_stage import located

        if not lines:
            return
        for f in shared:
            got = self._admit(f)
            if got is None:
                continue
            f, fold = got
            if fold and all(lines):
                self.folder.add_at(f, self.path, lines)
            else:
                for line in lines:
                    self.out.append(located([f], self.path, line)[0])

    def result(self) -> GateResult:
        shown, out, folder = self.path, self.out, self.folder
        for st in self.stages:
            self.add(st.finish())
        if self.rows_with_conv == 0 and self.bad_rows == 0:
            self.add([finding("D023", "the dataset holds no rows", path=shown)])
        out.extend(folder.findings())
        by_sev = out.by_severity
        by_code = out.by_code
        rows_failed = _rows_with_errors(out, folder.error_lines, shown)
        summary: dict[str, Any] = {
            "path": shown,
            "tmplcheck_version": __version__,
            "rows": self.rows_with_conv + self.bad_rows,
            "rows_read": self.rows_with_conv,
            "rows_unreadable": self.bad_rows,
            "rows_with_errors": rows_failed,
            "errors": by_sev.get("error", 0),
            "warnings": by_sev.get("warning", 0),
            "infos": by_sev.get("info", 0),
            "by_code": dict(sorted(by_code.items())),
            "per_file_rows": folder.rows(),
            "passed": by_sev.get("error", 0) == 0,
        }
        for st in self.stages:
            summary[st.name] = st.summary()
        return GateResult(shown, out, summary)
