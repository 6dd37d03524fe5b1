"""Read a tokenized dataset (columns of token ids, labels and masks) row by row, for ``tmplcheck audit``.

Formats: JSONL (one row object a line) or a ``.json`` list of rows, Parquet, Arrow (IPC file or stream, the
format of ``datasets``' cache files), a ``save_to_disk`` folder (``Dataset`` or ``DatasetDict``); a ``.csv`` is
not a tokenized format. A dataset id is read from the local Hugging Face hub cache only (no network).

Rows come out as ``(index, line, row)``: ``index`` 0-based, ``line`` the 1-based line of a JSONL file (None for
columnar formats), ``row`` a dict of columns (a row that is not a JSON object comes out as ``{"__error__": msg}``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: columns the audit reads (others are never loaded from columnar files)
COLUMNS = ("input_ids", "labels", "assistant_masks", "completion_mask", "attention_mask", "position_ids")


class TokenizedReadError(ValueError):
    """The dataset cannot be read at all (a usage error; rows that cannot be read are findings instead)."""


Row = tuple[int, "int | None", dict[str, Any]]


def _check_columns(names: list[str], where: str) -> list[str]:
    if "input_ids" not in names:
        raise TokenizedReadError(f"{where} has no input_ids column (columns: {', '.join(names) or 'none'}); "
                                 "audit needs a tokenized dataset: input_ids with labels or masks")
    return [c for c in COLUMNS if c in names]


def _jsonl(p: Path) -> Iterator[Row]:
    index = 0
    with p.open("rb") as fh:
        for line_no, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as e:
                yield index, line_no, {"__error__": f"not valid JSON ({e})"}
            else:
                yield index, line_no, obj if isinstance(obj, dict) else {
                    "__error__": f"a JSON {type(obj).__name__}, not an object with input_ids"}
            index += 1


def _json_list(p: Path) -> Iterator[Row]:
    try:
        data = json.loads(p.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise TokenizedReadError(f"{p}: not valid JSON ({e})") from None
    if isinstance(data, dict) and "input_ids" in data and isinstance(data["input_ids"], list):  # columns
        cols = {k: v for k, v in data.items() if k in COLUMNS and isinstance(v, list)}
        for i in range(len(data["input_ids"])):
            yield i, None, {k: v[i] for k, v in cols.items() if i < len(v)}
        return
    if not isinstance(data, list):
        raise TokenizedReadError(f"{p}: a JSON {type(data).__name__}; expected a list of rows or JSONL")
    for i, obj in enumerate(data):
        yield i, None, obj if isinstance(obj, dict) else {"__error__": f"a JSON {type(obj).__name__}, not an object"}


def _table_rows(table, where: str, batch: int = 256) -> Iterator[Row]:
    cols = _check_columns(table.column_names, where)
    table = table.select(cols)
    index = 0
    for rb in table.to_batches(max_chunksize=batch):
        for r in rb.to_pylist():
            yield index, None, r
            index += 1


def _pyarrow(p: Path):
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError as e:
        raise TokenizedReadError(f"{p}: reading Parquet/Arrow needs pyarrow (pip install pyarrow): {e}") from None
    return pyarrow


def _parquet(p: Path) -> Iterator[Row]:
    _pyarrow(p)
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(p)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise TokenizedReadError(f"{p}: not a readable Parquet file ({e})") from None
    cols = _check_columns(f.schema_arrow.names, str(p))
    index = 0
    for rb in f.iter_batches(batch_size=256, columns=cols):
        for r in rb.to_pylist():
            yield index, None, r
            index += 1


def _arrow(p: Path) -> Iterator[Row]:
    pa = _pyarrow(p)

    table = None
    for opener in (pa.ipc.open_stream, pa.ipc.open_file):
        try:
            with pa.memory_map(str(p)) as src:
                table = opener(src).read_all()
            break
        except Exception:  # noqa: BLE001 - try the other IPC flavour
            continue
    if table is None:
        raise TokenizedReadError(f"{p}: not a readable Arrow IPC file or stream")
    yield from _table_rows(table, str(p))


def _datasets_obj(ds, where: str, split: str | None) -> Iterator[Row]:
    from datasets import DatasetDict, IterableDatasetDict

    if isinstance(ds, (DatasetDict, IterableDatasetDict)):
        splits = list(ds.keys())
        name = split or ("train" if "train" in splits else splits[0] if len(splits) == 1 else None)
        if name is None or name not in splits:
            raise TokenizedReadError(f"{where} holds splits {', '.join(splits)}: pick one with --split")
        ds = ds[name]
    names = list(ds.column_names)
    cols = _check_columns(names, where)
    ds = ds.select_columns(cols)
    for i, r in enumerate(ds):
        yield i, None, dict(r)


def _disk(p: Path, split: str | None) -> Iterator[Row]:
    try:
        from datasets import load_from_disk
    except ImportError as e:
        raise TokenizedReadError(f"{p}: reading a save_to_disk folder needs the 'datasets' package ({e})") from None
    try:
        ds = load_from_disk(str(p))
    except Exception as e:  # noqa: BLE001 - FileNotFoundError / ValueError for a folder that is not a dataset
        raise TokenizedReadError(f"{p}: not a dataset folder written by save_to_disk ({e})") from None
    yield from _datasets_obj(ds, str(p), split)


def _hub(spec: str, split: str | None) -> Iterator[Row]:
    """A dataset id from the local Hugging Face hub cache, offline (as ``tmplcheck check`` reads one): the
    snapshot's parquet (else Arrow, else JSONL) files of ``split`` (default train; the files whose path names it,
    or all files when none names a split), one after another."""
    import re

    from tmplcheck.validator.sources import hub_cache_dir

    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise TokenizedReadError(f"{spec}: reading a dataset id needs huggingface_hub") from None
    repo, _, rev = spec.partition("@")
    cache = hub_cache_dir()
    try:
        d = Path(snapshot_download(repo, repo_type="dataset", revision=rev or None, local_files_only=True,
                                   cache_dir=cache))
    except Exception as e:  # noqa: BLE001 - LocalEntryNotFoundError and friends: not in the cache
        raise TokenizedReadError(f"{spec}: no such file, and not a dataset in the local Hugging Face cache ({cache}; "
                                 f"datasets are read offline) [{type(e).__name__}]") from None
    want = (split or "train").lower()

    def split_of(f: Path) -> str:
        m = re.search(r"(?:^|/)(train|validation|valid|dev|test)(?:[-_./]|$)", f.relative_to(d).as_posix().lower())
        return m.group(1) if m else ""

    for exts, reader in (((".parquet", ".pq"), _parquet), ((".arrow", ".ipc"), _arrow),
                         ((".jsonl", ".ndjson"), _jsonl)):
        files = sorted(f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in exts)
        if not files:
            continue
        if any(split_of(f) for f in files):
            files = [f for f in files if split_of(f) == want]
            if not files:
                raise TokenizedReadError(f"{spec} ({d}) has no {want!r} split")
        index = 0
        for f in files:
            for _i, line, row in reader(f):
                yield index, line, row
                index += 1
        return
    raise TokenizedReadError(f"{spec} ({d}) holds no parquet, Arrow or JSONL file")


def read_tokenized(spec: str | Path, *, split: str | None = None) -> Iterator[Row]:
    """The rows of a tokenized dataset. Raises :class:`TokenizedReadError` for a dataset that cannot be read."""
    p = Path(spec)
    if p.is_dir():
        return _disk(p, split)
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix in (".jsonl", ".ndjson"):
            return _jsonl(p)
        if suffix == ".json":
            return _json_list(p)
        if suffix in (".parquet", ".pq"):
            return _parquet(p)
        if suffix in (".arrow", ".ipc", ".feather"):
            return _arrow(p)
        raise TokenizedReadError(f"{p}: unknown tokenized format {suffix or '(no suffix)'}; use JSONL, Parquet, "
                                 "Arrow or a save_to_disk folder")
    if "/" in str(spec) and not str(spec).startswith((".", "/")) and str(spec).count("/") == 1:
        return _hub(str(spec), split)
    raise TokenizedReadError(f"{spec}: no such file or folder")
