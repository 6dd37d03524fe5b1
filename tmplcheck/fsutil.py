"""Atomic file writes: a temp file in the same folder, fsync, rename. An interrupted run never leaves a half file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def _atomic(path: str | os.PathLike, mode: str, **open_kw) -> Iterator[IO]:
    """An open temp file next to ``path`` that replaces ``path`` when the block ends, and is removed if it raises."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kw) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_atomic(path: str | os.PathLike, chunks: Iterable[str]) -> int:
    """Write the text chunks to ``path`` atomically; returns how many chunks were written."""
    n = 0
    with _atomic(path, "w", encoding="utf-8", newline="\n") as fh:
        for chunk in chunks:
            fh.write(chunk)
            n += 1
    return n


def write_atomic_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with _atomic(path, "wb") as fh:
        fh.write(data)
