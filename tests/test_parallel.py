"""The process pool gives exactly the serial path's findings and summary, in bounded memory."""

from __future__ import annotations

import json
import random

from tmplcheck.validator.gate import GateOptions, run_gate
from tmplcheck.validator.stages import StageConfig, build_stages


def _rows(n: int, seed: int = 0):
    rnd = random.Random(seed)
    words = ["alpha", "beta", " gamma", "\ndelta", "<|im_end|>", "ε", "🙂", "  ", "x" * 40]
    for i in range(n):
        turns = []
        if rnd.random() < 0.3:
            turns.append({"from": "system", "value": "Be brief."})
        for _ in range(rnd.randint(1, 3)):
            turns.append({"from": "human", "value": " ".join(rnd.choice(words) for _ in range(rnd.randint(1, 12)))})
            turns.append({"from": "gpt", "value": " ".join(rnd.choice(words) for _ in range(rnd.randint(0, 30)))})
        yield {"conversations": turns}


def _gate(path, jobs, **opt_kw):
    cfg = StageConfig(template="chatml", tokenizer="qwen2", max_length=48, extra={"jobs": jobs})
    return run_gate(path, GateOptions(stages=build_stages(cfg), **opt_kw))


def test_parallel_equals_serial(tmp_path):
    p = tmp_path / "data.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in _rows(700)))
    serial = _gate(p, 1)
    par = _gate(p, 2, chunk_rows=64)
    assert par.findings == serial.findings
    assert [f.data for f in par.findings] == [f.data for f in serial.findings]
    assert par.summary["tokens"] == serial.summary["tokens"]
    assert serial.summary["tokens"]["rows_encoded"] == 700
    assert {"K006", "K007"} <= set(serial.summary["tokens"]["rows_failed_by_code"])


def test_in_flight_chunks_are_bounded(tmp_path):
    from tmplcheck.validator import parallel

    seen = []
    orig = parallel.ChunkPool.submit

    def spy(self, chunk, first):
        seen.append(len(self._pending))
        yield from orig(self, chunk, first)

    parallel.ChunkPool.submit = spy
    try:
        p = tmp_path / "data.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in _rows(400, 1)))
        _gate(p, 2, chunk_rows=16)
    finally:
        parallel.ChunkPool.submit = orig
    assert seen and max(seen) <= 2 * 2
