"""Bounded memory: findings spill to sorted runs on disk and come back merged, identical to an in-memory sort."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tmplcheck.validator.findings import finding
from tmplcheck.validator.gate import GateOptions, run_gate
from tmplcheck.validator.report import report
from tmplcheck.validator.store import FindingStore

ROOT = Path(__file__).resolve().parent.parent


def test_spilled_store_equals_sorted_list():
    rng = random.Random(7)
    fs = [finding(rng.choice(["D013", "D014", "D017"]), f"m{i}", path="p", line=rng.randint(1, 300),
                  pointer=f"/conversations/{rng.randint(0, 3)}/value") for i in range(3000)]
    store = FindingStore(fs, spill_at=250)
    expect = sorted(fs, key=lambda f: f.sort_key())   # stable: arrival order breaks ties
    assert store.spilled_runs == 12
    assert list(store) == expect and len(store) == 3000
    assert store[17] == expect[17] and store[-1] == expect[-1] and store[100:110] == expect[100:110]
    a, b = iter(store), iter(store)                     # two iterations open at once
    next(a)
    assert next(b) == expect[0] and next(a) == expect[1]
    assert store.by_code == {c: sum(1 for f in fs if f.code == c) for c in {"D013", "D014", "D017"}}


def test_gate_with_tiny_spill_threshold_reports_the_same(tmp_path):
    path = ROOT / "fixtures" / "dataset" / "all_codes.jsonl"
    small = run_gate(path, GateOptions(max_line_bytes=2048, spill_at=3))
    big = run_gate(path, GateOptions(max_line_bytes=2048))
    assert small.findings.spilled_runs > 5
    assert list(small.findings) == list(big.findings)
    assert small.summary == big.summary
    for fmt in ("json", "jsonl", "junit", "sarif", "github", "text"):
        assert report(fmt, [small]) == report(fmt, [big])


def test_duplicates_found_at_the_end_point_to_the_first_line(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"q{i % 3}"}, {"role": "assistant", "content": "A"}]}
            for i in range(7)]
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run_gate(p)
    assert [(f.line, f.code, f.message) for f in res.findings] == [
        (4, "D020", "row repeats line 1 exactly"), (5, "D020", "row repeats line 2 exactly"),
        (6, "D020", "row repeats line 3 exactly"), (7, "D020", "row repeats line 1 exactly")]


def test_empty_report_formats_are_valid(tmp_path):
    res = run_gate(ROOT / "fixtures" / "dataset" / "clean.jsonl")
    assert json.loads(report("json", [res]))["findings"] == []
    assert json.loads(report("sarif", [res]))["runs"][0]["results"] == []
