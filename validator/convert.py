"""CSV → JSONL conversion: RFC 4180 quoting, embedded newlines, UTF-8 with or without BOM, atomic write."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from tmplcheck.fsutil import write_atomic


class ConvertError(ValueError):
    pass


@dataclass
class ConvertResult:
    rows: int
    output: Path


def convert_csv(src: str | os.PathLike, dst: str | os.PathLike, *, user_column: str, assistant_column: str,
                system: str | None = None, system_column: str | None = None, fmt: str = "sharegpt",
                encoding: str = "utf-8-sig", delimiter: str = ",") -> ConvertResult:
    if system is not None and system_column is not None:
        raise ConvertError("give --system or --system-column, not both")
    if fmt not in ("sharegpt", "openai"):
        raise ConvertError(f"unknown output format {fmt!r} (sharegpt or openai)")
    src = Path(src)
    try:
        fh = open(src, encoding=encoding, newline="")
    except OSError as e:
        raise ConvertError(f"{src}: {e.strerror}") from e

    def rows():
        with fh:
            reader = csv.reader(fh, delimiter=delimiter, strict=True)
            try:
                header = next(reader)
            except StopIteration:
                raise ConvertError(f"{src}: the file is empty (no header row)") from None
            except csv.Error as e:
                raise ConvertError(f"{src}:{reader.line_num}: {e}") from None
            except UnicodeDecodeError as e:
                raise ConvertError(f"{src}: not {encoding} text ({e.reason} at byte {e.start}); "
                                   "pass --encoding") from None
            cols = {name.strip(): i for i, name in enumerate(header)}
            wanted = [c for c in (user_column, assistant_column, system_column) if c is not None]
            missing = [c for c in wanted if c not in cols]
            if missing:
                raise ConvertError(f"{src}:1: column(s) {', '.join(map(repr, missing))} not in the header "
                                   f"(columns: {', '.join(map(repr, cols))})")
            r = 1
            while True:
                start = reader.line_num + 1
                try:
                    rec = next(reader)
                except StopIteration:
                    return
                except csv.Error as e:
                    raise ConvertError(f"{src}:{reader.line_num}: {e}") from None
                except UnicodeDecodeError as e:
                    raise ConvertError(f"{src}: row starting at line {start}: not {encoding} text ({e.reason}); "
                                       "pass --encoding") from None
                r += 1
                if not rec:
                    continue  # an empty line between records
                if len(rec) != len(header):
                    raise ConvertError(f"{src}:{start}: record {r} has {len(rec)} fields, the header has "
                                       f"{len(header)} (ragged row; check quoting)")
                sys_text = system if system is not None else (rec[cols[system_column]] if system_column else None)
                turns = []
                if sys_text:
                    turns.append(("system", sys_text))
                turns.append(("user", rec[cols[user_column]]))
                turns.append(("assistant", rec[cols[assistant_column]]))
                if fmt == "sharegpt":
                    names = {"system": "system", "user": "human", "assistant": "gpt"}
                    obj = {"conversations": [{"from": names[k], "value": v} for k, v in turns]}
                else:
                    obj = {"messages": [{"role": k, "content": v} for k, v in turns]}
                yield json.dumps(obj, ensure_ascii=False) + "\n"

    n = write_atomic(Path(dst), rows())
    return ConvertResult(rows=n, output=Path(dst))
