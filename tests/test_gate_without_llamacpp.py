"""The gate without a working llama-cpp-python: the llama.cpp checks (X codes, K010) are reported as not run, with
the reason, once per file; every other check runs; never an internal error.

The real case: llama-cpp-python 0.3.36 imports ``diskcache``, which an offline machine may lack. A fresh process with
``diskcache`` blocked reproduces it exactly (``import llama_cpp`` then fails inside llama-cpp-python itself).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TWEETS = ROOT / "fixtures" / "train" / "tweets.jsonl"

# runs the CLI in a process where `import diskcache` fails, as on a machine without it
BLOCKED = ("import sys; sys.modules['diskcache'] = None; sys.argv = ['tmplcheck'] + sys.argv[1:]; "
           "from tmplcheck.cli import main; main()")


def gate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKED, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_gate_runs_without_llama_cpp_and_says_so():
    r = gate("check", str(TWEETS), "--template", "llama-3", "--tokenizer", "llama-3", "--format", "json")
    assert "internal error" not in r.stderr, r.stderr
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    lc = out["summary"]["llamacpp"]
    assert lc["ran"] is False and "diskcache" in lc["reason"]
    assert lc["not_run"] == ["X codes (HF vs llama.cpp render)", "K010 (llama.cpp token ids)"]
    codes = {f["code"] for f in out["findings"]}
    assert not {c for c in codes if c.startswith("X")} and "K010" not in codes
    assert out["summary"]["template"]["llamacpp"] is None           # the template stage did not compare
    assert "llamacpp_rows_compared" not in out["summary"]["tokens"]  # nor did the token stage
    assert out["summary"]["tokens"]["rows_encoded"] == 24            # ...but every row was tokenized and checked


def test_text_report_says_it_once_per_file():
    r = gate("check", str(TWEETS), "--template", "llama-3", "--tokenizer", "llama-3")
    assert r.returncode == 0 and "internal error" not in r.stderr, r.stdout + r.stderr
    text = r.stdout + r.stderr
    assert text.count("not run: X codes (HF vs llama.cpp render) and K010 (llama.cpp token ids)") == 1, text
    assert "diskcache" in text


def test_in_process_import_failure(monkeypatch, tmp_path):
    """The same through the Python API, with llama_cpp itself unimportable (``sys.modules`` entry None)."""
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    from tmplcheck.validator.gate import GateOptions, run_gate
    from tmplcheck.validator.stages import StageConfig, build_stages, llama_cpp_unavailable

    assert "llama_cpp cannot be imported" in llama_cpp_unavailable()
    res = run_gate(TWEETS, GateOptions(stages=build_stages(StageConfig(template="llama-3"))))
    assert res.summary["llamacpp"]["not_run"] == ["X codes (HF vs llama.cpp render)"]
    assert res.passed and not [f for f in res.findings if f.code.startswith("X")]


def test_llama_cpp_present_means_no_note():
    from tmplcheck.validator.stages import llama_cpp_unavailable

    pytest.importorskip("llama_cpp")
    assert llama_cpp_unavailable() is None
