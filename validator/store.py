"""A sorted, bounded-memory collection of findings.

The gate keeps every finding (``--max-findings`` only trims output), so on a large file with a finding on every row
a plain list would grow with the file. The store keeps up to ``spill_at`` findings in memory; past that it sorts
them and writes them to a temporary file as one sorted run, and iteration merges the runs (an external merge
sort). Counts by code and severity are kept as findings arrive, so summaries need no extra pass.
"""

from __future__ import annotations

import heapq
import itertools
import os
import pickle
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

from tmplcheck.validator.findings import Finding, Severity


def _key(item: tuple[tuple, int, Finding]) -> tuple:
    return item[0], item[1]


class FindingStore(Sequence[Finding]):
    def __init__(self, findings: Iterable[Finding] = (), *, spill_at: int = 50_000):
        self.spill_at = spill_at
        self._buf: list[tuple[tuple, int, Finding]] = []
        self._runs: list[str] = []   # paths of the sorted runs on disk
        self._seq = itertools.count()
        self._n = 0
        self.by_code: Counter[str] = Counter()
        self.by_severity: Counter[str] = Counter()
        self.extend(findings)

    # ------------------------------------------------------------------------------------------------- writing
    def append(self, f: Finding) -> None:
        self._buf.append((f.sort_key(), next(self._seq), f))
        self._n += 1
        self.by_code[f.code] += 1
        self.by_severity[f.severity.value] += 1
        if len(self._buf) >= self.spill_at:
            self._spill()

    def extend(self, fs: Iterable[Finding]) -> None:
        for f in fs:
            self.append(f)

    def _spill(self) -> None:
        self._buf.sort(key=_key)
        fd, path = tempfile.mkstemp(prefix="tmplcheck-findings-", suffix=".pickle")
        self._runs.append(path)
        with os.fdopen(fd, "wb") as fh:
            # one pickle per block of items: reading a run back holds one block of it in memory at a time
            for k in range(0, len(self._buf), self._BLOCK):
                pickle.dump(self._buf[k:k + self._BLOCK], fh, protocol=pickle.HIGHEST_PROTOCOL)
        self._buf = []

    _BLOCK = 1024

    @staticmethod
    def _read_run(path: str) -> Iterator[tuple[tuple, int, Finding]]:
        with open(path, "rb") as fh:   # its own handle: several iterations may be open at once
            while True:
                try:
                    block = pickle.load(fh)
                except EOFError:
                    return
                yield from block

    # ------------------------------------------------------------------------------------------------- reading
    def __iter__(self) -> Iterator[Finding]:
        self._buf.sort(key=_key)
        if not self._runs:
            return (f for _, _, f in list(self._buf))
        runs = [self._read_run(p) for p in self._runs]
        return (f for _, _, f in heapq.merge(*runs, list(self._buf), key=_key))

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> Finding: ...

    @overload
    def __getitem__(self, i: slice) -> list[Finding]: ...

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            start, stop, step = i.indices(self._n)
            return list(itertools.islice(iter(self), start, stop, step))
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(i)
        return next(itertools.islice(iter(self), i, None))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, FindingStore)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"FindingStore({self._n} findings, {len(self._runs)} spilled runs)"

    @property
    def errors(self) -> int:
        return self.by_severity.get(Severity.ERROR.value, 0)

    @property
    def spilled_runs(self) -> int:
        return len(self._runs)

    def close(self) -> None:
        for p in self._runs:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        self._runs = []

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
