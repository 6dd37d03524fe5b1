"""The gate on Ray: the per-chunk work as Ray Data tasks, the whole-file work in one reduce step here.

The local gate (``validator/gate.py``) splits a file's work in two: the per-row work of a chunk of raw records
(decode, parse, the D checks, renders, tokenization: ``_ChunkWork``), which is pure per row, and the
order-dependent rest (exact duplicates, mixed formats, counters, per-file folding, the finding store, the summary:
``GateRun.feed`` and ``GateRun.result``). This engine runs the first half as Ray Data tasks and the second half in
this process, fed in (file, line) order: the same two functions as the local gate, so the findings and summary are
the local gate's by construction (and tested against it, ``tests/test_ray_engine.py``).

Inputs: whatever ``tmplcheck check`` reads, opened as the local gate opens it (``validator/sources.py``: JSONL, a
.json list of rows, parquet, Arrow, ``save_to_disk`` folders, cached dataset ids), plus URIs of JSONL/.json/parquet
files on any filesystem pyarrow opens (``s3://``, ``gs://``, ``hdfs://``...). One Ray Data task reads each input
(each file of a parquet folder: its rows numbered from the folder's metadata) and frames it into chunks of raw
records exactly as the local gate does; each chunk's per-row work is then a task of
its own, on any node. A ``ray.data.Dataset`` of rows (:func:`check_ray_dataset`): row *i* in the dataset's order is
record *i + 1*, normalised as the local gate normalises a columnar row.

The workers build the stages from the same :class:`~tmplcheck.config.Settings` (template, tokenizer, check
settings) once per worker process, as the local pool's forked workers inherit them. Nothing runs on the cluster
that the local gate does not run; the cluster needs tmplcheck installed (the same version) where the tasks run.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tmplcheck.config import Settings

#: raw records per Ray task (the local gate's ``chunk_rows`` is 512 and feeds two cores; a task has more overhead)
DEFAULT_CHUNK_ROWS = 2048
_ROW = "__tmplcheck_row"


class RayEngineError(RuntimeError):
    """Ray is missing, the cluster cannot be reached, or an input cannot be opened: a clear message, exit 2."""


# ------------------------------------------------------------------------------------------------------- cluster
def ensure_ray(address: str | None = None):
    """Import Ray and connect: ``address`` (``--ray-address``), else ``RAY_ADDRESS``, else a local cluster.
    Returns (ray, started) where ``started`` says this call started the connection (shut it down after)."""
    try:
        import ray
        import ray.data  # noqa: F401 - the engine's API
    except ImportError as e:
        raise RayEngineError(f"--engine ray needs Ray Data ({e.name or e} is not installed): "
                             "pip install 'tmplcheck[ray]'") from None
    if ray.is_initialized():
        return ray, False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _reachable(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level="warning", configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise RayEngineError(f"cannot connect to the Ray cluster at {address!r}: {e}" if address
                             else f"cannot start a local Ray cluster: {e}") from None
    return ray, True


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast, with the address, when a cluster's ``host:port`` does not answer (Ray itself retries for minutes).
    ``auto`` (the cluster this machine is part of) and addresses without a port are left to Ray."""
    import socket

    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise RayEngineError(f"cannot reach the Ray cluster at {address!r} ({e.strerror or e}); check "
                             "--ray-address / RAY_ADDRESS") from None


@contextmanager
def _task_errors():
    """A Ray task that failed (a worker without tmplcheck, a template path a node cannot read) → a clear message
    naming the cause, exit 2 (the task's traceback stays in Ray's logs)."""
    import ray.exceptions

    try:
        yield
    except ray.exceptions.RayError as e:
        raise RayEngineError(f"a Ray task failed: {_task_cause(e)}") from None


def _task_cause(e: BaseException) -> str:
    """The task's own exception, ``Name: message``, from the traceback text Ray carries (Ray Data wraps it in a
    ``UserCodeException`` that keeps only the text)."""
    import re

    for line in str(e).splitlines():
        m = re.match(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)): (.*)$", line.strip())
        if m and not m.group(1).startswith("ray."):
            return f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2)}"
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[-1] if lines else ''}"


@contextmanager
def _run_context(*datasets):
    """For one run: Ray Data keeps the order (results come back in (file, chunk) order, a dataset's rows in its
    order), progress bars only on a terminal, Ray Data's execution notes (plan, timing) in its log files only —
    on the current context and on the given datasets' own, all put back afterwards (a notebook's settings stay)."""
    import logging
    import sys

    import ray.data

    ctxs = list({id(c): c for c in [ray.data.DataContext.get_current(), *(d.context for d in datasets)]}.values())
    saved = [(c, c.execution_options.preserve_order, c.enable_progress_bars) for c in ctxs]
    loggers = [logging.getLogger("ray.data"), logging.getLogger("ray.data._internal.progress")]
    levels = [lg.level for lg in loggers]
    for c in ctxs:
        c.execution_options.preserve_order = True
        c.enable_progress_bars = sys.stderr.isatty()
    loggers[0].setLevel(logging.WARNING)
    loggers[1].setLevel(logging.ERROR)
    try:
        yield
    finally:
        for c, order, bars in saved:
            c.execution_options.preserve_order = order
            c.enable_progress_bars = bars
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


# ----------------------------------------------------------------------------------------------------- the work
@dataclass(frozen=True)
class _Spec:
    """What a worker needs to build the same chunk work as the gate's process: the settings and, per source, the
    display path and its framing (a JSON list; decoded rows rather than bytes). Pickled once, cached per worker
    process by its bytes."""

    settings: Settings
    shown: tuple[str, ...]
    is_array: tuple[bool, ...]
    objects: tuple[bool, ...]


_WORK_CACHE: dict[bytes, list] = {}


def _works(blob: bytes) -> list:
    """The ``_ChunkWork`` of every source, built once per worker process (stages loaded, ``prepare`` run)."""
    works = _WORK_CACHE.get(blob)
    if works is None:
        from types import SimpleNamespace

        from tmplcheck.validator.gate import GateRun, source_work

        spec: _Spec = pickle.loads(blob)
        stages = _build_stages(spec.settings)
        works = []
        for shown, is_array, objects in zip(spec.shown, spec.is_array, spec.objects):
            run = GateRun(shown, _gate_options(spec.settings, stages))
            works.append(source_work(run, SimpleNamespace(is_array=is_array, objects=objects)))
        _WORK_CACHE.clear()   # one run's work at a time per worker
        _WORK_CACHE[blob] = works
    return works


def _build_stages(settings: Settings) -> list:
    from tmplcheck.validator.stages import build_stages

    return build_stages(settings.stage_config())


def _gate_options(settings: Settings, stages: list, chunk_rows: int = DEFAULT_CHUNK_ROWS):
    opts = settings.gate_options(stages=stages)
    opts.chunk_rows = chunk_rows
    opts.jobs = 1   # the per-row work runs in Ray tasks, never in a local pool
    return opts


def _dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _process_batch(batch: dict[str, Any], blob: bytes) -> dict[str, list]:
    """Chunks of raw records (each a pickled ``(source, first, records)``) → their ``_ChunkWork`` results."""
    works = _works(blob)
    out = []
    for item in batch["chunk"]:
        src, first, recs = pickle.loads(item)
        out.append(_dumps((src, first, works[src].process(recs, first))))
    return {"result": out}


class _RawFile(io.RawIOBase):
    """A pyarrow file as a raw stream, so that ``io.BufferedReader`` gives ``readline`` over any filesystem."""

    def __init__(self, f):
        self.f = f

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        return self.f.seek(pos, whence)

    def tell(self) -> int:
        return self.f.tell()

    def readinto(self, b) -> int:
        data = self.f.read(len(b))
        n = len(data)
        b[:n] = data
        return n

    def close(self) -> None:
        self.f.close()
        super().close()


def is_uri(path: str) -> bool:
    return "://" in path


def _uri_file(path: str):
    import pyarrow.fs as pafs

    try:
        fs, inner = pafs.FileSystem.from_uri(path)
        if fs.get_file_info(inner).type != pafs.FileType.File:
            raise RayEngineError(f"{path}: no such file")
        return fs.open_input_file(inner)
    except (OSError, ValueError) as e:
        raise RayEngineError(f"{path}: cannot open it ({type(e).__name__}: {e})") from None


def open_binary(path: str):
    """``path`` (a local path or any URI pyarrow's filesystems open) as a buffered binary file."""
    if not is_uri(path):
        return open(path, "rb")
    return io.BufferedReader(_RawFile(_uri_file(path)), buffer_size=1 << 20)


def open_any_source(path: str, shown: str, settings: Settings):
    """``path`` as a ``validator/sources.py`` Source: a local path as the local gate opens it (``open_source``:
    JSONL, .json, parquet, Arrow, save_to_disk folders, cached dataset ids); a URI through pyarrow's filesystems
    (JSONL/.json framed by ``ingest.open_records``; parquet by ``sources.parquet_source``)."""
    from tmplcheck.validator import sources as S

    if not is_uri(path):
        try:
            return S.open_source(path, display_path=shown, input_format=settings.input_format,
                                 max_line_bytes=settings.max_line_bytes)
        except S.SourceError as e:
            raise RayEngineError(str(e)) from None
    name = path.split("?", 1)[0].lower()
    if name.endswith(S.PARQUET):
        try:
            return S.parquet_source([_uri_file(path)], shown, input_format=settings.input_format)
        except S.SourceError as e:
            raise RayEngineError(str(e)) from None
    from tmplcheck.validator.ingest import DEFAULT_MAX_LINE_BYTES, open_records

    limit = settings.max_line_bytes or DEFAULT_MAX_LINE_BYTES
    with open_binary(path) as fh:
        head = fh.read(4096)
    is_array, _ = open_records(io.BytesIO(head), name, max_line_bytes=limit, display_path=shown)

    def records():
        with open_binary(path) as fh:
            _arr, recs = open_records(fh, name, max_line_bytes=limit, display_path=shown)
            yield from recs

    return S.Source("json" if is_array else "jsonl", shown, records, objects=False, is_array=is_array)


def _read_chunks(row: dict[str, Any], paths: Sequence[str], shown: Sequence[str], settings: Settings,
                 chunk_rows: int) -> Iterator[dict[str, bytes]]:
    """One source (or one file of a parquet folder) → its chunks of raw records, read and framed as the local gate
    reads them, with the record numbers they have in the whole source."""
    from tmplcheck.validator.gate import _chunks

    src, part = int(row["src"]), int(row["part"])
    if part < 0:
        records, offset = open_any_source(paths[src], shown[src], settings).records(), 0
    else:
        records, offset = _part_records(row["file"], shown[src], settings, int(row["first"])), int(row["first"])
    for chunk, first in _chunks(records, chunk_rows):
        yield {"chunk": _dumps((src, offset + first, chunk))}


def _part_records(file: str, shown: str, settings: Settings, first: int):
    """The records of one file of a parquet folder, numbered as the folder's source numbers them (its rows follow
    the ``first`` rows of the files before it): ``sources.parquet_source`` on that file alone, shifted."""
    from pathlib import Path

    from tmplcheck.validator import sources as S

    for rec in S.parquet_source([Path(file)], shown, input_format=settings.input_format).records():
        if rec.findings:   # never: a columnar record carries no framing finding (they would need shifting too)
            raise RayEngineError(f"{file}: unexpected findings while reading")
        yield S.Record(rec.line + first, rec.data, rec.findings)


def _read_units(sources: list) -> list[dict[str, Any]]:
    """What the reading tasks read: each file of a parquet folder on its own (its rows' numbers follow from the
    folder's metadata), every other source whole."""
    from pathlib import Path

    units: list[dict[str, Any]] = []
    for k, src in enumerate(sources):
        if src.kind == "parquet" and len(src.parts) > 1:
            units += [{"src": k, "part": j, "file": str(Path(p.file).resolve()), "first": p.first}
                      for j, p in enumerate(src.parts)]
        else:
            units.append({"src": k, "part": -1, "file": "", "first": 0})
    return units


def _rows_batch(table, blob: bytes) -> dict[str, list]:
    """A batch of a row dataset (with its row numbers) → the chunk work's results; each row a decoded record,
    normalised as ``sources`` normalises columnar rows."""
    from tmplcheck.validator.sources import _row

    works = _works(blob)
    rows_no = table.column(_ROW).to_pylist()
    rows = table.drop_columns([_ROW]).to_pylist()
    out = []
    start = 0
    # a batch is a contiguous run of rows; split where it is not (never expected, kept exact anyway)
    for k in range(1, len(rows_no) + 1):
        if k == len(rows_no) or rows_no[k] != rows_no[k - 1] + 1:
            first = rows_no[start]
            recs = [(first + j + 1, _row(r), []) for j, r in enumerate(rows[start:k])]
            out.append(_dumps((0, first, works[0].process(recs, first))))
            start = k
    return {"result": out}


# --------------------------------------------------------------------------------------------------- the reduce
def _iter_results(ds) -> Iterator[tuple[int, int, list]]:
    for batch in ds.iter_batches(batch_size=1, batch_format="pyarrow", prefetch_batches=4):
        for item in batch.column("result").to_pylist():
            yield pickle.loads(item)


def _reduce(runs: list, results: Iterator[tuple[int, int, list]]) -> None:
    """Feed every chunk's results to its source's ``GateRun`` in (file, line) order (Ray Data keeps the order)."""
    for src, _first, res in results:
        runs[src].feed(res)


def check_paths_ray(paths: Sequence[str], settings: Settings | None = None, *, address: str | None = None,
                    chunk_rows: int = DEFAULT_CHUNK_ROWS, display_paths: Sequence[str] | None = None,
                    stages: list | None = None) -> list:
    """The gate over dataset files on Ray: one ``GateResult`` per input, equal to the local gate's on it.
    ``paths``: whatever ``tmplcheck check`` reads (JSONL, .json, parquet, Arrow, save_to_disk folders, cached
    dataset ids), or URIs of JSONL/.json/parquet files on any filesystem pyarrow opens. ``stages``: the settings'
    stage factories when the caller has built them already (``build_stages(settings.stage_config())``)."""
    settings = settings or Settings()
    shown = list(display_paths or paths)
    sources = [open_any_source(str(p), s, settings) for p, s in zip(paths, shown)]   # fails early, exit 2
    ray, started = ensure_ray(address)
    try:
        with _run_context(), _task_errors():
            return _check_sources(paths, shown, sources, settings, stages, chunk_rows)
    finally:
        if started:
            ray.shutdown()


def _check_sources(paths, shown, sources, settings: Settings, stages, chunk_rows: int) -> list:
    import ray.data

    from tmplcheck.validator.gate import source_result, source_run

    stages = stages if stages is not None else _build_stages(settings)
    opts = _gate_options(settings, stages, chunk_rows)
    runs = [source_run(src, opts) for src in sources]
    if not all(r.all_split for r in runs):
        raise RayEngineError("a stage without a chunk worker cannot run on Ray (use --engine local)")
    blob = _dumps(_Spec(settings, tuple(shown), tuple(s.is_array for s in sources),
                        tuple(s.objects for s in sources)))
    units = _read_units(sources)
    items = ray.data.from_items(units, override_num_blocks=len(units))
    # the reading tasks ask for less CPU than the work tasks: the two never fuse into one task per source, so
    # the chunks of one large file spread over the cluster
    chunks = items.flat_map(_read_chunks, fn_args=([str(p) for p in paths], shown, settings, chunk_rows),
                            num_cpus=0.5)
    done = chunks.map_batches(_process_batch, fn_args=(blob,), batch_size=1, batch_format="numpy", num_cpus=1)
    _reduce(runs, _iter_results(done))
    # a JSONL/.json file's result is run_gate's (no ``source`` in the summary), every other source's run_source's
    return [source_result(run, src) if src.objects else run.result() for run, src in zip(runs, sources)]


def check_ray_dataset(ds, settings: Settings | None = None, *, name: str = "<ray.data.Dataset>",
                      address: str | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS):
    """The gate over a ``ray.data.Dataset`` of rows (ShareGPT, OpenAI or Alpaca columns): row *i* in the
    dataset's order is record *i + 1* (shown as ``row i``), normalised as the local gate normalises a columnar
    row. Returns a ``GateResult`` (summary ``source``: ``{"kind": "ray_dataset"}``)."""
    from tmplcheck.validator import sources as S
    from tmplcheck.validator.gate import source_result, source_run

    settings = settings or Settings()
    S._check_columns(ds.columns(), name, settings.input_format)   # SourceError, as tmplcheck.check raises it
    ray, started = ensure_ray(address)
    try:
        import ray.data

        with _run_context(ds), _task_errors():
            source = S.Source("ray_dataset", name, lambda: iter(()), columns=list(ds.columns()))
            run = source_run(source, _gate_options(settings, _build_stages(settings), chunk_rows))
            blob = _dumps(_Spec(settings, (name,), (False,), (True,)))
            ds = ds.materialize()
            n = ds.count()
            if n:
                import warnings

                with warnings.catch_warnings():
                    # Ray 2.60 marks zip deprecated (removed in 2.64; the 'ray' extra pins 2.60): a row's number is
                    # its position in the materialized dataset, which is what zip pairs it with
                    warnings.simplefilter("ignore", DeprecationWarning)
                    numbered = ds.zip(ray.data.range(n).rename_columns({"id": _ROW}))
                done = numbered.map_batches(_rows_batch, fn_args=(blob,), batch_size=chunk_rows,
                                            batch_format="pyarrow", num_cpus=1)
                _reduce([run], _iter_results(done))
            return source_result(run, source)
    finally:
        if started:
            ray.shutdown()


__all__ = ["check_paths_ray", "check_ray_dataset", "ensure_ray", "RayEngineError", "open_any_source",
           "open_binary"]
