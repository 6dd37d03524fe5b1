"""The gate on Ray (``tmplcheck check --engine ray``, ``tmplcheck.ray_engine``) gives exactly the local gate's
findings and summary: on every fixture of the dataset, template, cross and token families (each family's fixtures
under its clean settings from the manifest), on 20k generated rows with planted defects spread over many Ray tasks
(exact duplicates far apart, in different chunks), on parquet and on a ``ray.data.Dataset`` of rows.

One local Ray cluster (``ray.init(num_cpus=2)``) for the module, shut down at its end.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the 'ray' extra is not installed")

from tmplcheck.config import Settings  # noqa: E402
from tmplcheck.ray_engine import check_paths_ray, check_ray_dataset  # noqa: E402
from tmplcheck.validator.gate import run_gate, run_source  # noqa: E402
from tmplcheck.validator.sources import open_source  # noqa: E402
from tmplcheck.validator.stages import build_stages  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"
LONG_LINES = ("all_codes.jsonl", "line_too_long.jsonl")   # checked with a small --max-line-bytes


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    yield
    ray.shutdown()


def _flat(res):
    return [(f.code, f.severity, f.message, f.path, f.line, f.pointer, f.hint, f.column,
             json.dumps(f.data, sort_keys=True, default=str)) for f in res.findings]


def _local(path, settings: Settings, shown: str):
    """What ``tmplcheck check`` runs locally: ``run_gate`` on a JSONL/.json file, ``run_source`` on the rest."""
    opts = settings.gate_options(stages=build_stages(settings.stage_config()))
    src = open_source(str(path), display_path=shown)
    return run_source(src, opts) if src.objects else run_gate(path, opts, display_path=shown)


def _same_as_local(paths: list[Path], settings: Settings, **kw) -> list:
    shown = [p.name for p in paths]
    on_ray = check_paths_ray([str(p) for p in paths], settings, display_paths=shown, **kw)
    assert len(on_ray) == len(paths)
    for p, s, r in zip(paths, shown, on_ray):
        local = _local(p, settings, s)
        assert _flat(r) == _flat(local), p.name
        assert r.summary == local.summary, p.name
    return on_ray


def test_dataset_fixtures_on_ray_equal_local():
    paths = sorted((FIX / "dataset").glob("*.json*"))
    assert len(paths) > 40
    res = _same_as_local([p for p in paths if p.name not in LONG_LINES], Settings(), chunk_rows=2)
    res += _same_as_local([p for p in paths if p.name in LONG_LINES], Settings(max_line_bytes=2048), chunk_rows=2)
    codes = set().union(*(r.summary["by_code"] for r in res))
    assert {"D001", "D003", "D004", "D005", "D020", "D021", "D022", "D023"} <= codes


@pytest.mark.parametrize("family,glob,template,tokenizer", [
    ("T", "templates/*.jsonl", "gemma", None),   # gemma refuses a system turn: T003
    ("X", "cross/*.jsonl", "chatml", None),
    ("K", "tokens/*.jsonl", "llama-3", "llama-3"),
])
def test_family_fixtures_on_ray_equal_local(family, glob, template, tokenizer):
    paths = sorted(FIX.glob(glob))
    assert paths
    res = _same_as_local(paths, Settings(template=template, tokenizer=tokenizer, max_length=64), chunk_rows=3)
    assert any(c.startswith(family) for r in res for c in r.summary["by_code"])


def _generated(path: Path, n: int, seed: int = 7) -> list[int]:
    """``n`` rows with defects of every family planted; returns the lines of rows copied from far earlier."""
    rnd = random.Random(seed)
    words = ["alpha", "beta", " gamma", "\ndelta", "<|eot_id|>", "ε", "🙂", "  ", "x" * 30, "\x01", "the", "answer"]

    def text(lo, hi):
        return " ".join(rnd.choice(words) for _ in range(rnd.randint(lo, hi)))

    kept: list[bytes] = []
    copies = []
    line = 0
    with open(path, "wb") as f:
        def put(b: bytes) -> None:
            nonlocal line
            f.write(b)
            line += b.count(b"\n")

        for i in range(n):
            turns = [{"role": "system", "content": "Be brief."}] if rnd.random() < 0.3 else []
            for _ in range(rnd.randint(1, 3)):
                turns += [{"role": "user", "content": text(1, 8)}, {"role": "assistant", "content": text(0, 12)}]
            row: dict = {"messages": turns}
            if i % 997 == 0 and i:                # mixed formats (D021)
                row = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
            elif i % 389 == 0:                    # a null content (D011), a system turn late (D015)
                turns.append({"role": "assistant", "content": None})
            elif i % 433 == 0:
                turns.insert(1, {"role": "system", "content": "late"})
            b = json.dumps(row, ensure_ascii=False).encode("utf-8")
            if i % 701 == 0:
                b = b.replace(b"Be brief", b"Be \xff brief") if b"Be brief" in b else b + b" "
            if i % 50 == 25:                      # rows without another planted defect, copied later
                kept.append(b)
            if i % 2503 == 0 and i > 10000:       # a copy of a row from the file's first chunks (D020)
                b = kept[(i // 2503) % 5]
                copies.append(line + 1)
            put(b + (b"\r\n" if i % 89 == 0 else b"\n"))
            if i % 1999 == 0:
                put(b"\n")
            if i % 1303 == 0:
                put(b"{bad json\n")
    return copies


@pytest.mark.slow
def test_20k_generated_rows_on_ray_equal_local(tmp_path):
    p = tmp_path / "rows.jsonl"
    copies = _generated(p, 20_000)
    other = tmp_path / "shard-2.jsonl"
    other.write_bytes(b"".join(p.read_bytes().splitlines(keepends=True)[:300]))
    settings = Settings(template="llama-3", tokenizer="llama-3", max_length=64)
    r, _ = _same_as_local([p, other], settings, chunk_rows=1000)
    codes = set(r.summary["by_code"])
    # dataset, token and mask families, the template pair's per-file X001; D021 on 20 rows only
    assert {"D001", "D002", "D004", "D005", "D011", "D015", "D020", "D021", "K007", "M004", "X001"} <= codes
    assert r.summary["by_code"]["D021"] == 20
    dup_lines = {f.line for f in r.findings if f.code == "D020"}
    assert set(copies) <= dup_lines and min(copies) > 10_000    # found across chunks, tasks apart
    assert r.summary["rows"] > 20_000


def _rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        msgs = [{"role": "user", "content": f"question {i % 40}"}, {"role": "assistant", "content": f"answer {i}"}]
        if i % 17 == 0:
            msgs[1]["content"] = ""                              # D013
        if i % 23 == 0:
            msgs = msgs + [{"role": "user", "content": "and?"}]  # D018
        rows.append({"messages": msgs})
    rows.append(dict(rows[5]))                                  # D020 at the last line
    return rows


def test_parquet_and_ray_dataset_equal_local(tmp_path):
    """A parquet file (several row groups) on Ray gives the local gate's result on it; a ``ray.data.Dataset`` of
    the same rows gives the local gate's on a ``datasets.Dataset`` of them (its ``source`` kind aside)."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _rows(600)
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, tmp_path / "rows.parquet", row_group_size=97)
    settings = Settings(template="llama-3", tokenizer="llama-3", max_length=64)
    [r] = _same_as_local([tmp_path / "rows.parquet"], settings, chunk_rows=64)
    assert {"D013", "D018", "D020"} <= set(r.summary["by_code"])
    assert [(f.line, f.data["row"], f.data["row_group"]) for f in r.findings if f.code == "D020"] == [(601, 600, 6)]
    # a folder of parquet shards is one dataset, as locally: the copy in the last shard repeats a row of the first
    shards = tmp_path / "shards"
    shards.mkdir()
    for k in range(3):
        pq.write_table(table.slice(200 * k, 200 if k < 2 else 201), shards / f"part-{k}.parquet", row_group_size=64)
    from tmplcheck.ray_engine import _read_units

    assert [(u["part"], u["first"]) for u in _read_units([open_source(str(shards))])] == [(0, 0), (1, 200), (2, 400)]
    [r] = _same_as_local([shards], settings, chunk_rows=64)   # each shard read by a task of its own
    assert [(f.data["file"].rsplit("/", 1)[-1], f.data["row"]) for f in r.findings if f.code == "D020"] == [
        ("part-2.parquet", 600)]

    opts = settings.gate_options(stages=build_stages(settings.stage_config()))
    local = run_source(open_source(datasets.Dataset(table), display_path="rows"), opts)
    on_ray = check_ray_dataset(ray.data.from_arrow(table).repartition(7), settings, name="rows", chunk_rows=50)
    assert _flat(on_ray) == _flat(local)
    # tmplcheck.check hands a ray.data.Dataset to the same engine
    import tmplcheck

    api = tmplcheck.check(ray.data.from_arrow(table), template="llama-3", tokenizer="llama-3", max_length=64,
                          name="rows")
    assert _flat(api.gate_result) == _flat(on_ray) and api.summary == on_ray.summary
    assert on_ray.summary.pop("source") == {"kind": "ray_dataset"} and local.summary.pop("source")["kind"] == "dataset"
    assert on_ray.summary == local.summary


def test_cli_engine_ray(tmp_path, monkeypatch):
    """``check --engine ray`` over two files reports what ``--engine local`` reports (the JSON report, timing
    aside), and a missing file is a usage error."""
    from click.testing import CliRunner

    from tmplcheck.cli import cli

    import tmplcheck.ray_engine as E

    calls = []
    real = E.check_paths_ray
    monkeypatch.setattr(E, "check_paths_ray", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    a, b = FIX / "dataset" / "duplicate_row.jsonl", FIX / "dataset" / "mixed_formats.jsonl"
    runner = CliRunner()
    out = {}
    for engine in ("local", "ray"):
        res = runner.invoke(cli, ["check", str(a), str(b), "--format", "json", "--engine", engine])
        assert res.exit_code == 1, res.output
        out[engine] = json.loads(res.stdout)
    assert out["ray"] == out["local"] and len(calls) == 1
    res = runner.invoke(cli, ["check", str(tmp_path / "nope.jsonl"), "--engine", "ray"])
    assert res.exit_code == 2 and "no such file" in res.output


def test_unreachable_cluster_is_a_clear_exit_2():
    """A cluster address that does not answer fails at once, naming it (Ray alone retries for minutes)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9"}
    r = subprocess.run([sys.executable, "-m", "tmplcheck", "check", str(FIX / "dataset" / "clean.jsonl"), "--engine",
                        "ray"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "cannot reach the Ray cluster at '127.0.0.1:9'" in r.stderr, r.stderr


def test_failed_task_is_a_clear_error():
    """A task that cannot build the stages (here: a template path the workers cannot read) ends the run with the
    cause, not a Ray traceback."""
    from tmplcheck.ray_engine import RayEngineError

    stages = build_stages(Settings().stage_config())   # what this process built; the workers build from settings
    with pytest.raises(RayEngineError, match=r"a Ray task failed: .*nowhere\.jinja"):
        check_paths_ray([str(FIX / "dataset" / "clean.jsonl")], Settings(template="/nowhere.jinja"), stages=stages)
