"""Atomic file writes: a temp file in the same folder, fsync, rename. An interrupted run never leaves a half file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def write_atomic(path: str | os.PathLike, chunks: Iterable[str]) -> int:
    """Write the text chunks to ``path`` atomically; returns how many chunks were written."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            n = 0
            for chunk in chunks:
                fh.write(chunk)
                n += 1
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return n
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
