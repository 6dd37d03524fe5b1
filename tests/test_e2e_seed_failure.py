"""The seed's failure, end to end and for real: a tiny random-init Llama with the real 128k Llama 3 vocabulary is
fully fine-tuned (packed sequences) twice on the same tweets dataset, once with the correct llama-3 template and
once with a template that omits <|eot_id|> after the assistant turn (the gate flags it; it is trained with --force).
`tmplcheck report` then generates on the held-out prompts with each trained model and scans the outputs.

The broken model runs on past its answer into the next row's header; with special tokens skipped that leaves role
words ("system", "user", "assistant") in the text, which the scan catches at a high rate. The correct model stops
at <|eot_id|> and its report is clean. Runs the real CLI (examples/seed-failure/reproduce.py); a few minutes on CPU.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "seed-failure" / "reproduce.py"


def _load():
    spec = importlib.util.spec_from_file_location("seed_failure_reproduce", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    pytest.importorskip("torch")
    work = tmp_path_factory.mktemp("seed-failure")
    out = _load().main(["--work", str(work)])
    print(json.dumps({k: out[k] for k in ("gate_broken_codes", "wall_seconds")}),
          {n: (out[n]["rates"], out[n]["example"]) for n in ("correct", "broken")})
    return work, out


@pytest.mark.slow
def test_gate_flags_the_broken_template(outcome):
    _, out = outcome
    codes = out["gate_broken_codes"]
    assert out["gate_broken_exit"] == 1, out
    assert "T006" in codes, codes   # the assistant turn is not closed by an end-of-turn
    assert any(c[0] in "KM" for c in codes), codes


@pytest.mark.slow
def test_both_runs_are_the_naive_pipeline(outcome):
    work, _ = outcome
    correct = json.loads((work / "run-correct" / "run.json").read_text())
    broken = json.loads((work / "run-broken" / "run.json").read_text())
    for run in (correct, broken):
        assert run["mode"] == "full" and run["packing"] is True and run["loss_on"] == "all"
    assert correct["forced"] is False and correct["approval"] == "approval.json"
    assert broken["forced"] is True and broken["approval"] is None


@pytest.mark.slow
def test_correct_run_stops_and_is_clean(outcome):
    work, out = outcome
    c = out["correct"]
    assert c["exit"] == 0 and c["verdict"] == "pass", c
    assert all(r == 0 for r in c["rates"].values()), c["rates"]
    gens = [json.loads(x) for x in (work / "run-correct" / "report" / "generations.jsonl").read_text().splitlines()]
    greedy = [g for g in gens if g["mode"] == "greedy"]
    assert greedy and all(g["finish_reason"] == "stop" and g["output"].endswith("<|eot_id|>") for g in greedy)


@pytest.mark.slow
def test_broken_run_leaks_role_words(outcome):
    work, out = outcome
    b = out["broken"]
    assert b["exit"] == 1 and b["verdict"] == "fail", b
    skipped = b["groups"]["greedy/skipped"]
    assert skipped["A001"] >= 0.5, skipped   # trailing "system"/"user"/"assistant" with special tokens skipped
    kept = b["groups"]["greedy/kept"]
    assert max(kept["A005"], kept["A007"]) >= 0.5, kept   # it runs on into the next header / BOS
    gens = [json.loads(x) for x in (work / "run-broken" / "report" / "generations.jsonl").read_text().splitlines()]
    leaked = [g for g in gens if g["mode"] == "greedy"
              and any(w in g["output_skipped"] for w in ("system\n", "user\n", "assistant\n"))]
    assert len(leaked) >= 0.5 * sum(g["mode"] == "greedy" for g in gens)
    html = (work / "run-broken" / "report" / "report.html").read_text()
    assert "No approval stamp" in html and "FAIL" in html
