"""No line stops the gate: hostile lines (deep nesting, huge numbers, NaN/Infinity, lone surrogates, duplicate keys,
NUL, invalid UTF-8, lines up to 10 MB) mixed with good rows, through the whole command line with a template and a
tokenizer: exit 0 or 1, never 2; every hostile line gets its own located findings; every good row is checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings

from tmplcheck.cli import cli
from tmplcheck.validator import bounds
from tmplcheck.validator.strategies import hostile_files

FIX = Path(__file__).resolve().parent.parent / "fixtures"


def gate(path: Path, *extra: str) -> tuple[int, dict]:
    r = CliRunner().invoke(cli, ["check", str(path), "--template", "llama-3", "--tokenizer", "llama-3",
                                 "--format", "json", "--jobs", "1", *extra])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    assert r.exit_code in (0, 1), r.output[-2000:]
    return r.exit_code, json.loads(r.output[r.output.find("{"):])


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(lines=hostile_files())
def test_hostile_lines_never_stop_the_gate(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("hostile") / "data.jsonl"
    path.write_bytes(b"\n".join(b for _, b in lines) + b"\n")
    status, out = gate(path)
    by_line: dict[int, set[str]] = {}
    errors_at: set[int] = set()
    for f in out["findings"]:
        by_line.setdefault(f["line"], set()).add(f["code"])
        if f["severity"] == "error":
            errors_at.add(f["line"])
    good = [i for i, (ok, _) in enumerate(lines, 1) if ok]
    bad = [i for i, (ok, _) in enumerate(lines, 1) if not ok]
    for i in bad:   # one finding set per bad line, located at it
        assert by_line.get(i), (i, lines[i - 1][1][:200], out["findings"][:5])
    for i in good:  # the good rows pass, whatever their neighbours
        assert i not in errors_at, (i, by_line.get(i))
    s = out["summary"]
    assert s["rows"] == len(lines)
    assert s["tokens"]["rows_encoded"] >= len(good)
    assert status == (1 if s["errors"] else 0)


@pytest.mark.parametrize("line,code", [
    (b"[" * 100_000, "D060"),
    (b'{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "x", "w": '
     + b"9" * 5000 + b"}]}", "D062"),
    (b'{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "x", "w": NaN}]}', "D062"),
])
def test_the_seed_crashes_are_located_findings(tmp_path, line, code):
    """The lines from the issue: 100,000 nested '[' ended the run with RecursionError (exit 2)."""
    good = b'{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}'
    path = tmp_path / "d.jsonl"
    path.write_bytes(good + b"\n" + line + b"\n" + good.replace(b"Hi", b"Hey") + b"\n")
    status, out = gate(path)
    assert status == 1
    assert [(f["line"], f["code"]) for f in out["findings"] if f["code"][0] == "D"] == [(2, code)]
    assert out["summary"]["rows"] == 3 and out["summary"]["tokens"]["rows_encoded"] == 2


def test_bounds_unit():
    p = {"path": "d.jsonl", "line": 7}
    [f] = bounds.check_raw(b'{"a": ' + b"[" * 70 + b"]" * 70 + b"}", **p)
    assert (f.code, f.line, f.column, f.data["depth"]) == ("D060", 7, 70, 71)   # the 64th '[' passes the limit
    # brackets and digits inside strings do not count, escaped quotes included
    assert bounds.check_raw(b'{"a": "' + b"[" * 500 + b'\\"' + b"9" * 5000 + b'"}', **p) == []
    assert bounds.check_raw(b'{"a": [[["x"]]]}', **p) == []
    wide = {"conversations": [], "m": {f"k{i}": 0 for i in range(1001)}}
    [f] = bounds.check_decoded(wide, json.dumps(wide).encode(), **p)
    assert (f.code, f.pointer) == ("D061", "/m")
    [f] = bounds.check_decoded({"messages": [{"role": "user", "content": "x" * 1_000_001}]}, b"x" * 1_000_100, **p)
    assert (f.code, f.pointer) == ("D061", "/messages/0/content")
    [f] = bounds.check_decoded({"messages": [], "w": float("nan")}, b'{"messages": [], "w": NaN}', **p)
    assert (f.code, f.pointer) == ("D062", "/w")
    assert bounds.check_decoded({"messages": [{"role": "user", "content": "NaN"}]}, b'"NaN"', **p) == []
