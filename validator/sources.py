"""Record sources: where the gate's rows come from, and where each row is in them.

A source yields raw records ``(line, data, findings)`` in row order, as ``ingest.open_records`` does for JSONL:

- JSONL / a ``.json`` list: ``data`` is the record's bytes; ``line`` its line in the file. The byte-level checks
  (D001-D005, D022, D028, D060-D062) are theirs.
- parquet (streamed row group by row group with pyarrow), Arrow IPC files (file or stream format, as
  ``datasets`` writes them), ``datasets.save_to_disk`` folders, a dataset id from the local Hugging Face cache,
  and in-memory rows (a list of dicts, a ``datasets.Dataset``/``IterableDataset``, a pandas DataFrame): ``data`` is
  the row as a Python object (``Source.objects``), and ``line`` is the row's index + 1 (findings keep the 1-based
  ``line`` every other part of tmplcheck counts rows by; they are *shown* as ``row N``, N = the 0-based index
  ``dataset[N]`` takes, with the file and row group where the source has them, and carry ``row``/``row_group``/
  ``file`` in their ``data`` for the JSON and SARIF reports).

Typed columns need one normalisation so that the same rows give the same findings whatever they are stored in: a
struct column holds every key any row has, so a key a row did not have reads as null. A null (or, from pandas, NaN)
value is therefore dropped from every object of a columnar or DataFrame row — except a message's content
(``content``/``value``), which stays so that a null content is reported as JSON's ``null`` is (D011); a missing
role reads as missing (D010), as in JSONL. The one difference left: a JSONL message with no content key at all (and
no tool call) is D010, its columnar row's null content D011; a JSONL ``"role": null`` is D011, its columnar row D010. numpy arrays and scalars (pandas) become lists and Python numbers. Rows given as a list of dicts are taken
exactly as written (JSON semantics).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tmplcheck.validator.findings import Finding

#: the suffixes read as columnar files
PARQUET = (".parquet", ".pq")
ARROW = (".arrow", ".feather", ".ipc")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
#: the columns one of which a row needs (ShareGPT, OpenAI, Alpaca)
ROW_COLUMNS = ("conversations", "messages", "instruction")
#: null values kept: a message's content (an explicit ``"content": null`` is how exports write a message without one)
_KEEP_NULL = frozenset({"content", "value"})
BATCH_ROWS = 512


class SourceError(ValueError):
    """The data cannot be read at all (not a finding about a row): a corrupt file, a missing column, a dataset id
    that is not in the local cache. The command line exits 2 with the message."""


@dataclass
class Record:
    line: int
    data: Any
    findings: list[Finding] = field(default_factory=list)


@dataclass
class Part:
    """One file of a columnar source: its rows are ``first .. first + rows - 1`` (0-based, across the source);
    ``row_groups``: the first row of each row group (parquet), else empty."""

    file: str
    first: int
    rows: int = 0
    row_groups: list[int] = field(default_factory=list)


@dataclass
class Source:
    kind: str                 # jsonl | json | parquet | arrow | save_to_disk | hub | rows | dataset | dataframe
    path: str                 # what findings and reports name
    records: Callable[[], Iterator[Record]]
    objects: bool = True      # records carry decoded rows (False: JSONL bytes)
    is_array: bool = False    # JSONL framing: a .json list (True) or lines
    parts: list[Part] = field(default_factory=list)
    columns: list[str] | None = None

    @property
    def located(self) -> bool:
        """Findings get a row location (every source but a JSONL/JSON file)."""
        return self.objects

    def where(self, line: int) -> dict[str, Any]:
        """``{"row": N, "file": ..., "row_group": G}`` for the record at ``line`` (file and row group where the
        source has them)."""
        row = line - 1
        out: dict[str, Any] = {"row": row}
        part = None
        for p in self.parts:
            if p.first <= row < p.first + p.rows:
                part = p
                break
        if part is not None:
            if len(self.parts) > 1 or part.file != self.path:
                out["file"] = part.file
            if part.row_groups:
                import bisect

                out["row_group"] = bisect.bisect_right(part.row_groups, row) - 1
        return out

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind}
        if self.parts:
            d["files"] = [{"file": p.file, "first_row": p.first, "rows": p.rows,
                           **({"row_groups": len(p.row_groups)} if p.row_groups else {})} for p in self.parts]
        return d


def location_text(f: Finding) -> str:
    """How a report names where a finding is: ``path:line`` for a JSONL line, ``path:row N (row group G)`` for a
    row of a columnar or in-memory source, the path alone for a file-level finding."""
    if not f.line:
        return f.path
    d = f.data
    if "row" in d:
        where = f"{d.get('file', f.path)}:row {d['row']}"
        if "row_group" in d:
            where += f" (row group {d['row_group']})"
        return where
    return f"{f.path}:{f.line}"


# ----------------------------------------------------------------------------------------------- normalisation
def clean(value: Any, nan: bool = False) -> Any:
    """A columnar value as its JSON row would hold it: null keys dropped (but content), numpy → Python."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            v = clean(v, nan)
            if v is None and k not in _KEEP_NULL:
                continue
            out[k] = v
        return out
    if isinstance(value, (list, tuple)):
        return [clean(v, nan) for v in value]
    if nan and isinstance(value, float) and math.isnan(value):
        return None
    mod = type(value).__module__
    if mod == "numpy":
        import numpy as np

        if isinstance(value, np.ndarray):
            return [clean(v, nan) for v in value.tolist()] if value.dtype == object else \
                clean(value.tolist(), nan)
        if isinstance(value, np.generic):
            return clean(value.item(), nan)
    elif mod.startswith("pandas") and value.__class__.__name__ in ("NAType", "NaTType"):
        return None
    return value


def _row(obj: Any, nan: bool = False) -> Any:
    """A row of a columnar source: a dict with its null keys dropped (a message's null content stays)."""
    if not isinstance(obj, dict):
        return clean(obj, nan)
    out = {}
    for k, v in obj.items():
        v = clean(v, nan)
        if v is not None:
            out[k] = v
    return out


def _check_columns(columns: Iterable[str], path: str, input_format: str | None) -> None:
    cols = [str(c) for c in columns]
    want = {"sharegpt": ("conversations",), "openai": ("messages",), "alpaca": ("instruction",)}.get(
        input_format or "", ROW_COLUMNS)
    if not any(c in cols for c in want):
        what = " or ".join(repr(c) for c in want)
        raise SourceError(f"{path}: no {what} column, so no row can be read (columns: "
                          f"{', '.join(cols[:12]) or 'none'}{', …' if len(cols) > 12 else ''})"
                          + ("" if input_format else "; ShareGPT rows need 'conversations', OpenAI rows 'messages', "
                             "Alpaca rows 'instruction' and 'output'"))


# ------------------------------------------------------------------------------------------------------ parquet
def _parquet_parts(files: list[Path], shown: str | None) -> tuple[list, list[Part], list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    opened, parts, columns = [], [], None
    first = 0
    for f in files:
        name = shown if shown and len(files) == 1 else str(f)
        try:
            pf = pq.ParquetFile(f)
        except (pa.ArrowException, OSError) as e:
            raise SourceError(f"{name}: not a readable parquet file ({type(e).__name__}: {e})") from None
        md = pf.metadata
        starts, n = [], 0
        for g in range(md.num_row_groups):
            starts.append(first + n)
            n += md.row_group(g).num_rows
        parts.append(Part(name, first, n, starts))
        first += n
        opened.append(pf)
        if columns is None:
            columns = list(pf.schema_arrow.names)
    return opened, parts, columns or []


def parquet_source(files: list[Path], shown: str, kind: str = "parquet",
                   input_format: str | None = None) -> Source:
    """Parquet files, read a row group at a time in batches (never a whole file in memory)."""
    import pyarrow as pa

    opened, parts, columns = _parquet_parts(files, shown)
    _check_columns(columns, shown, input_format)

    def records() -> Iterator[Record]:
        for pf, part in zip(opened, parts):
            row = part.first
            for g in range(pf.metadata.num_row_groups):
                try:
                    for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[g]):
                        for obj in batch.to_pylist():
                            row += 1
                            yield Record(row, _row(obj))
                except (pa.ArrowException, OSError) as e:
                    raise SourceError(f"{part.file}: row group {g} cannot be read ({type(e).__name__}: {e})") \
                        from None

    return Source(kind, shown, records, parts=parts, columns=columns)


# -------------------------------------------------------------------------------------------------------- arrow
def _open_ipc(path: Path, name: str):
    import pyarrow as pa

    try:
        return pa.ipc.open_file(pa.memory_map(str(path)))
    except (pa.ArrowException, OSError):
        pass
    try:
        return pa.ipc.open_stream(pa.memory_map(str(path)))
    except (pa.ArrowException, OSError) as e:
        raise SourceError(f"{name}: not a readable Arrow IPC file or stream ({type(e).__name__}: {e})") from None


def _ipc_batches(reader) -> Iterator[Any]:
    if hasattr(reader, "num_record_batches"):
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)
    else:
        yield from reader


def arrow_source(files: list[Path], shown: str, kind: str = "arrow", input_format: str | None = None) -> Source:
    """Arrow IPC files (file or stream format: ``datasets`` writes streams), a record batch at a time."""
    import pyarrow as pa

    parts, columns = [], None
    first = 0
    for f in files:
        name = shown if len(files) == 1 and kind == "arrow" else str(f)
        reader = _open_ipc(f, name)
        if columns is None:
            columns = list(reader.schema.names)
        if hasattr(reader, "num_record_batches"):
            n = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
        else:
            n = sum(b.num_rows for b in reader)
        parts.append(Part(name, first, n))
        first += n
    _check_columns(columns or [], shown, input_format)

    def records() -> Iterator[Record]:
        for f, part in zip(files, parts):
            row = part.first
            try:
                for batch in _ipc_batches(_open_ipc(f, part.file)):
                    for k in range(0, batch.num_rows, BATCH_ROWS):
                        for obj in batch.slice(k, BATCH_ROWS).to_pylist():
                            row += 1
                            yield Record(row, _row(obj))
            except (pa.ArrowException, OSError) as e:
                raise SourceError(f"{part.file}: cannot be read after row {row - 1} ({type(e).__name__}: {e})") \
                    from None

    return Source(kind, shown, records, parts=parts, columns=columns)


def save_to_disk_source(d: Path, shown: str, input_format: str | None = None) -> Source:
    """A ``datasets`` ``save_to_disk`` folder (state.json names its Arrow files, in order)."""
    if (d / "dataset_dict.json").is_file():
        try:
            splits = json.loads((d / "dataset_dict.json").read_text())["splits"]
        except (OSError, ValueError, KeyError, TypeError):
            splits = []
        raise SourceError(f"{shown} is a DatasetDict folder: check one split, e.g. {shown}/{(splits or ['train'])[0]}"
                          f" (splits: {', '.join(map(str, splits)) or 'unknown'})")
    state = d / "state.json"
    try:
        files = [d / f["filename"] for f in json.loads(state.read_text())["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SourceError(f"{shown}: not a datasets save_to_disk folder (state.json: {type(e).__name__}: {e})") \
            from None
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise SourceError(f"{shown}: state.json names Arrow files that are not there: {', '.join(missing)}")
    return arrow_source(files, shown, kind="save_to_disk", input_format=input_format)


# ---------------------------------------------------------------------------------------------- the local hub cache
def hub_cache_dir() -> str:
    """The hub cache: ``HF_HUB_CACHE`` (read now, so that a process can point it elsewhere), else
    huggingface_hub's own default (``HF_HOME``/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:
        return os.path.join(os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")


def _split_of(p: Path, root: Path) -> str:
    rel = p.relative_to(root).as_posix().lower()
    m = re.search(r"(?:^|/)(train|validation|valid|dev|test)(?:[-_./]|$)", rel)
    return m.group(1) if m else ""


#: JSON files of a dataset folder that are metadata, not rows
_METADATA = frozenset({"dataset_info.json", "dataset_infos.json", "state.json", "dataset_dict.json"})


def _data_files(root: Path, exts: tuple[str, ...], split: str | None, what: str) -> list[Path]:
    """The files of a folder with these suffixes, in name order; when any file's path names a split (``train``,
    ``test``, ``validation``...), only those of ``split``."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts
                   and p.name not in _METADATA and ".cache" not in p.relative_to(root).parts)
    named = {f: _split_of(f, root) for f in files}
    if files and split and any(named.values()):
        picked = [f for f in files if named[f] == split]
        if not picked:
            raise SourceError(f"{what} has no {split!r} split (splits: "
                              f"{', '.join(sorted({s for s in named.values() if s}))})")
        return picked
    return files


def hub_source(repo_id: str, split: str | None = "train", input_format: str | None = None,
               max_line_bytes: int | None = None) -> Source:
    """A dataset id resolved from the local Hugging Face hub cache, offline (never the network): its parquet files
    (or Arrow, or a single JSONL/JSON file) of ``split`` (the files whose path names the split; all files when no
    file names any split)."""
    cache = hub_cache_dir()
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise SourceError(f"{repo_id}: reading a dataset id needs huggingface_hub (pip install 'tmplcheck[hf]')") \
            from None
    repo, _, rev = repo_id.partition("@")
    try:
        d = Path(snapshot_download(repo, repo_type="dataset", revision=rev or None, local_files_only=True,
                                   cache_dir=cache))
    except Exception as e:  # LocalEntryNotFoundError and friends: not in the cache
        raise SourceError(f"dataset {repo_id!r} is not in the local Hugging Face cache ({cache}); tmplcheck reads "
                          f"dataset ids offline: download it first (huggingface-cli download --repo-type dataset "
                          f"{repo}) or pass a file [{type(e).__name__}]") from None
    for kind, exts in (("parquet", PARQUET), ("arrow", ARROW), ("jsonl", (".jsonl", ".ndjson", ".json"))):
        files = _data_files(d, exts, split, f"dataset {repo_id!r} ({d})")
        if not files:
            continue
        if kind == "parquet":
            return parquet_source(files, repo_id, kind="hub", input_format=input_format)
        if kind == "arrow":
            return arrow_source(files, repo_id, kind="hub", input_format=input_format)
        if len(files) > 1:
            raise SourceError(f"dataset {repo_id!r} ({d}) holds {len(files)} JSON files for split {split!r}: check "
                              "them one by one")
        return jsonl_source(files[0], str(files[0]), max_line_bytes=max_line_bytes)
    raise SourceError(f"dataset {repo_id!r} ({d}) holds no parquet, Arrow or JSONL file")


# ------------------------------------------------------------------------------------------------------ JSONL
def jsonl_source(path: Path, shown: str, *, max_line_bytes: int | None = None) -> Source:
    from tmplcheck.validator.ingest import DEFAULT_MAX_LINE_BYTES, open_records

    limit = max_line_bytes or DEFAULT_MAX_LINE_BYTES
    with open(path, "rb") as fh:
        head = fh.read(4096)
    stripped = head.lstrip(b"\xef\xbb\xbf").lstrip()
    suffix = path.suffix.lower()
    is_array = suffix == ".json" or (suffix not in (".jsonl", ".ndjson") and stripped.startswith(b"["))

    def records() -> Iterator[Record]:
        with open(path, "rb") as fh:
            _arr, recs = open_records(fh, path, max_line_bytes=limit, display_path=shown)
            yield from recs

    return Source("json" if is_array else "jsonl", shown, records, objects=False, is_array=is_array)


# ------------------------------------------------------------------------------------------------------ in memory
def rows_source(rows: Iterable[Any], shown: str = "<rows>") -> Source:
    """A list (or any iterable) of rows, taken as their JSON would be."""

    def records() -> Iterator[Record]:
        for i, obj in enumerate(rows):
            yield Record(i + 1, obj)

    return Source("rows", shown, records)


def dataset_source(ds: Any, shown: str = "<Dataset>", input_format: str | None = None) -> Source:
    """A ``datasets.Dataset`` (read as Arrow batches, its indices mapping honoured) or ``IterableDataset``."""
    cols = getattr(ds, "column_names", None)
    if cols is not None:
        _check_columns(cols, shown, input_format)
    if hasattr(ds, "with_format") and hasattr(ds, "__len__"):
        def records() -> Iterator[Record]:
            row = 0
            for table in ds.with_format("arrow").iter(batch_size=BATCH_ROWS):
                for obj in table.to_pylist():
                    row += 1
                    yield Record(row, _row(obj))

        return Source("dataset", shown, records, columns=list(cols or []))

    def records_iter() -> Iterator[Record]:
        for i, obj in enumerate(ds):
            yield Record(i + 1, _row(obj))

    return Source("dataset", shown, records_iter, columns=list(cols or []) if cols else None)


def dataframe_source(df: Any, shown: str = "<DataFrame>", input_format: str | None = None) -> Source:
    """A pandas DataFrame, a slice of rows at a time (numpy arrays and NaN normalised, see the module)."""
    _check_columns(list(df.columns), shown, input_format)

    def records() -> Iterator[Record]:
        row = 0
        for k in range(0, len(df), BATCH_ROWS):
            for obj in df.iloc[k:k + BATCH_ROWS].to_dict("records"):
                row += 1
                yield Record(row, _row(obj, nan=True))

    return Source("dataframe", shown, records, columns=[str(c) for c in df.columns])


# ------------------------------------------------------------------------------------------------------ dispatch
#: suffixes that say a spec is a file name, not a dataset id (a missing file is "no such file", not "not cached")
_FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".txt", ".gz", ".zst") + PARQUET + ARROW


def is_hub_id(spec: str) -> bool:
    repo = spec.partition("@")[0]
    return bool(_HUB_ID.match(repo)) and not spec.startswith((".", "/", "~")) and \
        not repo.lower().endswith(_FILE_SUFFIXES)


def open_source(data: Any, *, display_path: str | None = None, input_format: str | None = None,
                max_line_bytes: int | None = None, split: str | None = "train") -> Source:
    """Any input tmplcheck reads → a Source; raises SourceError when it cannot be read at all."""
    if isinstance(data, Source):
        return data
    if isinstance(data, (str, os.PathLike)):
        spec = os.fspath(data)
        p = Path(spec).expanduser()
        shown = display_path or spec
        if p.is_dir():
            if (p / "state.json").is_file() or (p / "dataset_dict.json").is_file():
                return save_to_disk_source(p, shown, input_format)
            pq_files = _data_files(p, PARQUET, split, shown)
            if pq_files:
                return parquet_source(pq_files, shown, input_format=input_format)
            arrow_files = _data_files(p, ARROW, split, shown)
            if arrow_files:
                return arrow_source(arrow_files, shown, input_format=input_format)
            raise SourceError(f"{shown}: a folder that is neither a datasets save_to_disk folder nor holds parquet "
                              "or Arrow files")
        if p.is_file():
            suffix = p.suffix.lower()
            if suffix in PARQUET:
                return parquet_source([p], shown, input_format=input_format)
            if suffix in ARROW:
                return arrow_source([p], shown, input_format=input_format)
            return jsonl_source(p, shown, max_line_bytes=max_line_bytes)
        if is_hub_id(spec):
            return hub_source(spec, split, input_format=input_format, max_line_bytes=max_line_bytes)
        raise SourceError(f"{spec}: no such file, folder or cached dataset id")
    mod = type(data).__module__ or ""
    name = type(data).__name__
    if mod.startswith("pandas") and name == "DataFrame":
        return dataframe_source(data, display_path or "<DataFrame>", input_format)
    if mod.startswith("datasets") and name in ("Dataset", "IterableDataset"):
        return dataset_source(data, display_path or f"<{name}>", input_format)
    if mod.startswith("datasets") and name in ("DatasetDict", "IterableDatasetDict"):
        raise SourceError(f"a {name} holds splits ({', '.join(map(str, data.keys()))}): pass one, e.g. "
                          f"data[{next(iter(data.keys()), 'train')!r}]")
    if isinstance(data, dict):
        raise SourceError("data is one row (a dict): pass a list of rows")
    if isinstance(data, (list, tuple)) or (hasattr(data, "__iter__") and not isinstance(data, (bytes, str))):
        return rows_source(data, display_path or "<rows>")
    raise SourceError(f"cannot read rows from a {mod}.{name}: pass a path, a list of rows, a datasets.Dataset or "
                      "a pandas DataFrame")
