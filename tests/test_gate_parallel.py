"""The gate's process pool (parsing, D checks, renders and tokenization in workers; the order-dependent bookkeeping in
the gate's process) gives exactly the serial path's findings and summary: on every dataset and token fixture, and on
a few thousand generated rows with defects of every kind spread over many chunks."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from tmplcheck.validator import gate as G
from tmplcheck.validator.gate import GateOptions, run_gate
from tmplcheck.validator.stages import StageConfig, build_stages

ROOT = Path(__file__).resolve().parent.parent
DATASET_FIXTURES = sorted((ROOT / "fixtures" / "dataset").glob("*.json*"))
TOKEN_FIXTURES = sorted((ROOT / "fixtures" / "tokens").glob("*.jsonl"))


def _flat(res):
    return [(f.code, f.severity, f.message, f.path, f.line, f.pointer, f.hint, f.column,
             json.dumps(f.data, sort_keys=True, default=str)) for f in res.findings]


def _same(a, b):
    assert _flat(a) == _flat(b)
    assert a.summary == b.summary


@pytest.fixture(scope="module")
def llama3_stages():
    return build_stages(StageConfig(template="llama-3", tokenizer="llama-3", max_length=64, extra={"jobs": 2}))


@pytest.mark.parametrize("path", DATASET_FIXTURES, ids=lambda p: p.name)
def test_dataset_fixtures_pooled_equal_serial(path):
    kw = {"max_line_bytes": 2048} if path.name in ("all_codes.jsonl", "line_too_long.jsonl") else {}
    serial = run_gate(path, GateOptions(jobs=1, **kw), display_path=path.name)
    pooled = run_gate(path, GateOptions(jobs=2, chunk_rows=1, **kw), display_path=path.name)
    _same(serial, pooled)


def test_token_fixtures_pooled_equal_serial(llama3_stages):
    assert TOKEN_FIXTURES
    for path in TOKEN_FIXTURES:
        serial = run_gate(path, GateOptions(stages=llama3_stages, jobs=1), display_path=path.name)
        pooled = run_gate(path, GateOptions(stages=llama3_stages, jobs=2, chunk_rows=2), display_path=path.name)
        _same(serial, pooled)


def _generated(path: Path, n: int, seed: int = 3) -> None:
    rnd = random.Random(seed)
    words = ["alpha", "beta", " gamma", "\ndelta", "<|eot_id|>", "<|im_end|>", "ε", "🙂", "  ", "x" * 30, "\x01",
             "\ufffd", "the", "answer"]

    def text(lo, hi):
        return " ".join(rnd.choice(words) for _ in range(rnd.randint(lo, hi)))

    with open(path, "wb") as f:
        for i in range(n):
            turns = [{"from": "system", "value": "Be brief."}] if rnd.random() < 0.3 else []
            for _ in range(rnd.randint(1, 3)):
                turns += [{"from": "human", "value": text(1, 10)}, {"from": "gpt", "value": text(0, 25)}]
            row: dict = {"conversations": turns}
            if i % 151 == 0:
                row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
            if i % 173 == 0 and "conversations" in row:
                turns.append({"from": "gpt", "value": None})
            line = json.dumps(row, ensure_ascii=False).encode("utf-8")
            if i % 211 == 0:
                line = line.replace(b"Be brief", b"Be \xff brief") if b"Be brief" in line else line + b" "
            f.write(line + (b"\r\n" if i % 89 == 0 else b"\n"))
            if i % 97 == 0:
                f.write(b"\n")
            if i % 131 == 0:
                f.write(b"{bad json\n")
            if i % 50 == 0:
                f.write(line + b"\n")


def test_generated_rows_pooled_equal_serial(tmp_path, llama3_stages):
    p = tmp_path / "rows.jsonl"
    _generated(p, 3000)
    serial = run_gate(p, GateOptions(stages=llama3_stages, jobs=1), display_path="rows.jsonl")
    pooled = run_gate(p, GateOptions(stages=llama3_stages, jobs=2, chunk_rows=97), display_path="rows.jsonl")
    _same(serial, pooled)
    codes = set(serial.summary["by_code"])
    assert {"D001", "D002", "D004", "D005", "D011", "D020", "D021", "K007"} <= codes
    tok = serial.summary["tokens"]
    assert tok["rows_encoded"] > 2900
    # the sampled checks: every record up to 256, then one record in 50 (by record ordinal: blank and unreadable
    # lines count too), over the rows the token stage encodes
    assert tok["sampling"] == {"head_rows": 256, "then_one_in": 50, "prefix_head_rows": 256, "prefix_then_one_in": 50}
    assert 256 - 10 < tok["llamacpp_rows_compared"] < 256 + (3200 - 256) // 50 + 1
    assert tok["llamacpp_rows_compared"] == tok["prefix_rows_rendered"]


def test_pooled_gate_process_does_not_parse_rows(tmp_path, monkeypatch):
    """With the pool on, JSON decoding and row parsing happen in the workers only."""
    p = tmp_path / "rows.jsonl"
    _generated(p, 400)
    main = os.getpid()
    calls = []
    orig = G.parse_record

    def spy(*a, **kw):
        if os.getpid() == main:
            calls.append(a[0])
        return orig(*a, **kw)

    monkeypatch.setattr(G, "parse_record", spy)
    pooled = run_gate(p, GateOptions(jobs=2, chunk_rows=64))
    assert calls == []
    serial = run_gate(p, GateOptions(jobs=1, chunk_rows=64))
    assert len(calls) == serial.summary["rows"] + serial.summary["by_code"].get("D005", 0)
    _same(serial, pooled)


def test_stage_without_chunk_worker_gets_every_conversation(tmp_path):
    """A stage with only ``check(conv)`` still sees every readable row, in order (the gate then stays serial)."""
    p = tmp_path / "rows.jsonl"
    _generated(p, 300)

    class Lines:
        name = "lines"

        def __init__(self, path):
            self.seen = []

        def check(self, conv):
            self.seen.append((conv.line, len(conv.messages)))
            return []

        def finish(self):
            return []

        def summary(self):
            return {"seen": self.seen}

    res = run_gate(p, GateOptions(stages=[Lines], jobs=2, chunk_rows=16))
    seen = res.summary["lines"]["seen"]
    assert len(seen) == res.summary["rows_read"] and [s for s, _ in seen] == sorted(s for s, _ in seen)
    _same(run_gate(p, GateOptions(jobs=1)), run_gate(p, GateOptions(jobs=2, chunk_rows=16)))
