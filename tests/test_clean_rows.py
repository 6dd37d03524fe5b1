"""Runs of clean rows travel from the chunk workers as columns (``gate.CleanRows``) and are taken by each stage's
``take_clean``: the gate's findings (every field) and summary are exactly those of the row-by-row path
(``GateOptions(clean_rows=False)``), on generated files that put every order-dependent decision inside such runs —
a format switch (D021 on each later row), reasoning and plain rows (D050's first lines), exact duplicates across
chunks, conversation shapes changing (each its own llama.cpp comparison), per-row llama.cpp differences that are
not folded (zephyr's X011 on system rows), rows that are not clean between them — under select/ignore, severity
overrides, no per-file folding, one process and a pool, and the template/tokenizer pairs of several families."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest

from tmplcheck.validator.findings import Severity
from tmplcheck.validator.gate import CleanRows, GateOptions, _ChunkWork, run_gate
from tmplcheck.validator.stages import StageConfig, build_stages

WORDS = "the quick brown fox jumps over a lazy dog while models learn to answer questions politely".split()


def _text(rnd: random.Random, lo: int, hi: int) -> str:
    return " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(lo, hi))).capitalize()


def write_rows(path: Path, n: int = 1400, seed: int = 0) -> Path:
    rnd = random.Random(seed)
    lines = []
    for i in range(n):
        conv = []
        if rnd.random() < 0.3:
            conv.append({"from": "system", "value": "You are terse."})
        for _ in range(rnd.randint(1, 2)):
            conv += [{"from": "human", "value": f"{_text(rnd, 2, 8)}? ({i})"},
                     {"from": "gpt", "value": _text(rnd, 3, 12) + "."}]
        row: dict = {"conversations": conv}
        if i >= n // 2:                      # the file switches format half way: D021 on every later row
            row = {"messages": [{"role": {"system": "system", "human": "user", "gpt": "assistant"}[m["from"]],
                                 "content": m["value"]} for m in conv]}
        if i % 97 == 50:                     # reasoning rows among plain ones: D050
            key = "conversations" if "conversations" in row else "messages"
            field = "value" if key == "conversations" else "content"
            row[key][-1][field] = "<think>short</think>" + row[key][-1][field]
        lines.append(json.dumps(row))
        if i % 211 == 7:                     # an exact duplicate a few chunks later: D020
            lines.insert(len(lines) - 1 - rnd.randint(0, 3), json.dumps(row))
        if i % 157 == 3:                     # rows that are not clean between the runs
            lines.append("")                                                   # D005
            lines.append(json.dumps({"conversations": [{"from": "human", "value": "hi <|eot_id|> <|im_end|> </s> there"},
                                                       {"from": "gpt", "value": "ok"}]}))   # K006
            lines.append("{not json")                                          # D001
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _gate(path: Path, template: str, tokenizer: str, clean: bool, jobs: int, **opts):
    stages = build_stages(StageConfig(template=template, tokenizer=tokenizer, max_length=4096,
                                      extra={"jobs": jobs}))
    res = run_gate(path, GateOptions(stages=stages, clean_rows=clean, chunk_rows=64, jobs=jobs, **opts))
    return [dataclasses.asdict(f) for f in res.findings], json.loads(json.dumps(res.summary, default=str))


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> Path:
    return write_rows(tmp_path_factory.mktemp("clean") / "rows.jsonl")


CASES = [
    ("llama-3", "llama-3", 2, {}),
    ("llama-3", "llama-3", 1, {}),
    ("llama-3", "llama-3", 2, {"fold_per_file": False}),
    ("llama-3", "llama-3", 2, {"select": ["X", "D"]}),
    ("llama-3", "llama-3", 2, {"ignore": ["X001"]}),
    ("llama-3", "llama-3", 2, {"severity": {"X001": (Severity.WARNING, "raised by a test")}}),
    ("chatml", "qwen2", 2, {}),
    ("zephyr", "llama-2", 2, {}),
    ("llama-3.1", "llama-3", 2, {}),
]


@pytest.mark.parametrize("template,tokenizer,jobs,opts", CASES,
                         ids=[f"{t}-{k}-j{j}-{'-'.join(o) or 'default'}" for t, k, j, o in CASES])
def test_clean_runs_give_the_row_by_row_findings_and_summary(rows, template, tokenizer, jobs, opts):
    blocks = _gate(rows, template, tokenizer, True, jobs, **opts)
    one_by_one = _gate(rows, template, tokenizer, False, jobs, **opts)
    assert blocks[1] == one_by_one[1]
    assert blocks[0] == one_by_one[0]
    codes = {f["code"] for f in blocks[0]}
    if not opts.get("select") and not opts.get("ignore"):
        assert {"D021", "D050", "D020", "D005", "D001", "K006"} <= codes   # the file does what it says
    if tokenizer != "llama-2":   # (SentencePiece rows take the full checks, never the regular path)
        assert blocks[1]["tokens"]["regular_rows"] > 1000


def test_the_workers_really_ship_runs_of_clean_rows(rows):
    """The path under test is taken: most rows of a clean file arrive inside ``CleanRows``, and ``rows()`` gives
    back the tuples of the row-by-row path."""
    from tmplcheck.validator.gate import GateRun
    from tmplcheck.validator.ingest import open_records

    stages = build_stages(StageConfig(template="llama-3", tokenizer="llama-3", max_length=4096, extra={"jobs": 1}))
    run = GateRun(str(rows), GateOptions(stages=stages, jobs=1))
    work: _ChunkWork = run.work(False)
    assert work.clean_rows
    with open(rows, "rb") as fh:
        recs = [(r.line, r.data, r.findings) for r in open_records(fh, rows)[1]][300:700]
    out = work.process(recs, 300)   # past the head every row of which is compared with llama.cpp
    blocks = [x for x in out if type(x) is CleanRows]
    assert sum(len(b) for b in blocks) > 200
    work.clean_rows = False
    plain = work.process(recs, 300)
    expanded = [r for x in out for r in (x.rows() if type(x) is CleanRows else [x])]
    assert len(expanded) == len(plain)
    for a, b in zip(expanded, plain):
        assert a[0] == b[0] and a[1] == b[1] and a[2] == b[2]


def _folded(run) -> list[dict]:
    return [dataclasses.asdict(f) for f in run.folder.findings()] + [dataclasses.asdict(f) for f in run.out]


@pytest.mark.parametrize("saturated", [False, True])
@pytest.mark.parametrize("opts", [{}, {"fold_per_file": False}, {"severity": {"X001": (Severity.WARNING, "test")}}])
def test_shapes_taken_at_once_fold_as_rows_in_file_order(saturated, opts):
    """``GateRun.add_shared`` (each shape's shared findings at all its rows of a block) gives what ``add_at`` run by
    run in file order gives: the folded finding's first lines and first wording, before the folder shows all the
    lines it shows (the file's first rows) and after."""
    from tmplcheck.validator.findings import finding
    from tmplcheck.validator.gate import GateRun

    a = [finding("X001", "shape A's wording"), finding("X011", "not folded, A")]
    b = [finding("X001", "shape B's wording")]
    c: list = []                                                        # a shape with nothing to say
    rows = [(3, a), (4, b), (5, a), (6, c), (7, b), (9, a), (10, b), (11, b), (12, a)]
    groups = [(a, [n for n, s in rows if s is a]), (b, [n for n, s in rows if s is b])]

    def run():
        r = GateRun("f.jsonl", GateOptions(**opts))
        if saturated:
            r.add_at(b, [1, 2, 3 - 1, 20, 21, 22])   # (a line shown only once)
        return r

    at_once, by_run = run(), run()
    at_once.add_shared(groups)
    for n, s in rows:
        by_run.add_at(s, [n])
    assert _folded(at_once) == _folded(by_run)
    lines = _folded(at_once)[0]["data"].get("lines") if opts.get("fold_per_file", True) else None
    if lines is not None and not saturated:
        assert lines == [3, 4, 5, 7, 9]
