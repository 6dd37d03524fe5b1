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
from hypothesis import given, settings
from hypothesis import strategies as st

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


def _spec_counts(rows):
    """The dataset stage's counts row by row, written out plainly: the specification of ``DatasetStage._count``."""
    formats, first_line_of, d021 = {}, {}, []
    first_fmt = last = None
    reasoning_rows = plain_rows = 0
    first_reasoning = first_plain = None
    for line, fmt, key, roles, reasoning in rows:
        if fmt != last:
            if fmt not in formats:
                first_line_of[fmt] = line
            first_fmt = first_fmt or fmt
            last = fmt
        formats[fmt] = formats.get(fmt, 0) + 1
        if "assistant" in roles:
            if reasoning:
                reasoning_rows += 1
                first_reasoning = first_reasoning or line
            else:
                plain_rows += 1
                first_plain = first_plain or line
        if fmt != first_fmt:
            d021.append((line, key, f"row is {fmt} but the file started as {first_fmt} (line {first_line_of[first_fmt]})"))
    return formats, d021, reasoning_rows, plain_rows, first_reasoning, first_plain


_ROLES = [("user", "assistant"), ("system", "user", "assistant"), ("user",), ("user", "assistant", "user", "assistant"),
          ()]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["sharegpt", "openai", "alpaca"]), st.sampled_from(range(len(_ROLES))),
                          st.booleans()), min_size=1, max_size=60),
       st.lists(st.integers(1, 9), min_size=1, max_size=12), st.booleans())
def test_dataset_counts_of_blocks_and_single_rows_are_the_row_by_row_counts(spec_rows, cuts, one_format):
    """``DatasetStage`` counts formats (D021), reasoning and plain rows and their first lines (D050), and turns the
    same whether rows come one by one (``take``) or as blocks of any size (``take_clean``): against the plain
    row-by-row specification above."""
    from types import SimpleNamespace

    from tmplcheck.validator.gate import DatasetStage, RowInfo

    rows = [(3 * k + 1, "sharegpt" if one_format else fmt, f"/k{k % 3}", _ROLES[r], think)
            for k, (fmt, r, think) in enumerate(spec_rows)]
    want_formats, want_d021, want_r, want_p, want_fr, want_fp = _spec_counts(rows)
    for as_blocks in (True, False):
        stage = DatasetStage("f.jsonl")
        found = []
        at, c = 0, 0
        while at < len(rows):
            part = rows[at:at + cuts[c % len(cuts)]] if as_blocks else rows[at:at + 1]
            at += len(part)
            c += 1
            if as_blocks:
                block = SimpleNamespace(lines=[r[0] for r in part], formats=[r[1] for r in part],
                                        keys=[r[2] for r in part], roles=[r[3] for r in part],
                                        reasoning=[r[4] for r in part], digests=bytearray(16 * len(part)))
                got, _ = DatasetStage.take_clean(stage, _Sized(block, len(part)), "empty")
                found += got
            else:
                line, fmt, key, roles, think = part[0]
                found += stage.take(RowInfo(line, fmt, key, True, roles, b"\0" * 16, think), [])
        assert dict(stage.formats) == want_formats
        assert [(f.line, f.pointer, f.message) for f in found if f.code == "D021"] == want_d021
        assert (stage.reasoning_rows, stage.plain_rows) == (want_r, want_p)
        assert (stage.first_reasoning, stage.first_plain) == (want_fr, want_fp)
        turns = {}
        for r in rows:
            for role in r[3]:
                turns[role] = turns.get(role, 0) + 1
        assert dict(stage.turns) == turns


class _Sized:
    def __init__(self, ns, n):
        self.__dict__.update(ns.__dict__)
        self._n = n

    def __len__(self):
        return self._n


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 5000)), max_size=50), st.integers(1, 7))
def test_token_stats_of_columns_are_the_row_by_row_stats(rows, cut):
    """``TokenStats.add_many`` (columns of clean rows) against the statistics written out row by row."""
    import math

    from tmplcheck.validator.token_stage import TokenStats

    stats = TokenStats()
    for k in range(0, len(rows), cut):
        part = rows[k:k + cut]
        stats.add_many([t for t, _ in part], [tr for _, tr in part])
    hist: dict = {}
    for t, _ in rows:
        b = max(0, t.bit_length() - 1)
        hist[b] = hist.get(b, 0) + 1
    assert (stats.n, stats.total, stats.trained, stats.zero_trained) == (
        len(rows), sum(t for t, _ in rows), sum(tr for _, tr in rows), sum(1 for _, tr in rows if tr == 0))
    assert (stats.min, stats.max) == ((min(t for t, _ in rows), max(t for t, _ in rows)) if rows else (math.inf, 0))
    assert dict(stats.hist) == hist
