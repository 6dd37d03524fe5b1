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


# ------------------------------------------------------------------------------------------ export and serve
# The same two trained runs, exported with `tmplcheck export` (llama.cpp's own convert_hf_to_gguf.py) and generated
# through llama-cpp-python's chat completion (`tmplcheck report --engine llamacpp`): the shipped GGUF must behave as
# the trained model did. `verify-model` passes the export and fails GGUFs edited after export with the gguf package.

def _cli(*args: str) -> tuple[int, str]:
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "tmplcheck", *args], capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


@pytest.fixture(scope="module")
def served(outcome):
    work, out = outcome
    res = {}
    for name in ("correct", "broken"):
        run = work / f"run-{name}"
        code, text = _cli("export", str(run))
        # the broken template ends assistant turns with nothing; llama.cpp's built-in llama3 format (what a server
        # without --jinja detects from it) writes <|eot_id|> there: verify-model's X011, exit 1, export written
        assert (code, "verify-model: PASS" in text) == ((0, True) if name == "correct" else (1, False)), text
        assert (run / "export" / "model.gguf").is_file() and (run / "export" / "Modelfile").is_file()
        if name == "broken":
            assert "X011" in text, text
        rcode, rtext = _cli("report", str(run), "--engine", "llamacpp", "--samples", str(out["config"]["samples"]),
                            "--max-new-tokens", str(out["config"]["max_new_tokens"]))
        rep = json.loads((run / "report" / "report.json").read_text())
        res[name] = {"export": text, "report_exit": rcode, "report": rep, "run": run}
        print(name, {e: {g: v["rates"]["A001"] for g, v in d["scan"]["groups"].items()}
                     for e, d in rep["engines"].items()})
    return res


def _gguf_fields(path):
    import gguf

    r = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}


@pytest.mark.slow
def test_export_carries_the_validated_template_stops_and_bos(served):
    run = served["correct"]["run"]
    f = _gguf_fields(run / "export" / "model.gguf")
    trained = json.loads((run / "run.json").read_text())["template"]["source"]
    assert f["tokenizer.chat_template"] == trained
    assert f["tokenizer.ggml.eos_token_id"] == 128009 and f["tokenizer.ggml.eot_token_id"] == 128009
    assert f["tokenizer.ggml.add_bos_token"] is True          # the template writes BOS once; llama.cpp's
    assert f["general.architecture"] == "llama"               # built-in llama3 format leaves it to add_bos
    modelfile = (run / "export" / "Modelfile").read_text()
    assert "FROM ./model.gguf" in modelfile and 'PARAMETER stop "<|eot_id|>"' in modelfile
    assert "{{ .Prompt }}" not in modelfile and "<|begin_of_text|>" not in modelfile
    code, text = _cli("verify-model", str(run / "export"))
    assert code == 0, text


@pytest.mark.slow
def test_llamacpp_generations_match_transformers(served):
    broken = served["broken"]["report"]["engines"]
    correct = served["correct"]["report"]["engines"]
    assert set(broken) == {"hf", "llamacpp"} and set(correct) == {"hf", "llamacpp"}
    # the broken run leaks the trailing role word through llama.cpp as through transformers
    for engine in ("hf", "llamacpp"):
        assert broken[engine]["scan"]["groups"]["greedy/skipped"]["rates"]["A001"] >= 0.5, (engine, broken[engine])
    assert served["broken"]["report_exit"] == 1
    # the correct one stops at <|eot_id|> and its greedy generations are clean through both
    for engine in ("hf", "llamacpp"):
        for g in ("greedy/kept", "greedy/skipped"):
            rates = correct[engine]["scan"]["groups"][g]["rates"]
            assert all(r == 0 for r in rates.values()), (engine, g, rates)
    gens = [json.loads(x) for x in (served["correct"]["run"] / "report" / "generations-llamacpp.jsonl")
            .read_text().splitlines()]
    greedy = [g for g in gens if g["mode"] == "greedy"]
    assert greedy and all(g["finish_reason"] == "stop" and g["output_ids"][-1] == 128009 for g in greedy)
    assert all(g["prompt_text"].startswith("<|begin_of_text|><|start_header_id|>system") for g in greedy)
    assert all(g["prompt_text"].count("<|begin_of_text|>") == 1 for g in greedy)
    html = (served["broken"]["run"] / "report" / "report.html").read_text()
    assert 'id="engine-rates"' in html and 'data-engine="llamacpp"' in html and 'data-engine="hf"' in html


@pytest.mark.slow
def test_verify_model_fails_a_gguf_edited_after_export(served, tmp_path):
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    src = served["correct"]["run"] / "export" / "model.gguf"

    def edited(name: str, new: dict, remove: list[str]):
        dst = tmp_path / name
        reader = gguf.GGUFReader(str(src))
        writer = gguf.GGUFWriter(str(dst), arch=reader.fields["general.architecture"].contents())
        copy_with_new_metadata(reader, writer, new, remove)
        return dst

    run = str(served["correct"]["run"])
    chatml = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    t = edited("template.gguf", {"tokenizer.chat_template": MetadataDetails(gguf.GGUFValueType.STRING, chatml)}, [])
    code, text = _cli("verify-model", str(t), "--run", run, "--max-rows", "20", "--format", "json")
    codes = {f["code"] for f in json.loads(text[text.find("{"):])["findings"]}
    # G002 names the edit; llama.cpp's built-in detection now picks ChatML, so the rows render otherwise (X codes)
    assert code == 1 and "G002" in codes and codes & {"X004", "X006", "X007", "X011"}, text
    s = edited("stops.gguf", {"tokenizer.ggml.eos_token_id": MetadataDetails(gguf.GGUFValueType.UINT32, 128001)},
               ["tokenizer.ggml.eot_token_id"])
    code, text = _cli("verify-model", str(s), "--run", run, "--max-rows", "20", "--format", "json")
    found = json.loads(text[text.find("{"):])["findings"]
    assert code == 1 and [f["code"] for f in found if f["code"][0] == "G"] == ["G003"], text
    code, text = _cli("verify-model", str(src), "--run", run, "--max-rows", "20", "--format", "json")
    assert code == 0 and not [f for f in json.loads(text[text.find("{"):])["findings"] if f["code"][0] == "G"], text
