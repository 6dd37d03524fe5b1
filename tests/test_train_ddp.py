"""``tmplcheck train --nproc 2`` on the CPU: two processes (torchrun, DDP over gloo) train the tiny Llama with the
real Llama 3 vocabulary and give the same run as one process.

"The same outputs" here: the same run directory (the same files, the same tokenizer and generation config, run.json
equal but for its time stamp and the process count), the same optimiser steps on the same rows (the global batch
stays --batch-size: each process takes half of it), so the same per-step losses and the same trained tokens, and
adapter weights equal to float32 rounding (DDP averages two half-batch gradients where one process takes one
gradient of the whole batch: the sums differ in the last bits).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parent.parent
TWEETS = ROOT / "fixtures" / "train" / "tweets.jsonl"
ARGS = ("--template", "llama-3", "--max-steps", 3, "--batch-size", 4, "--backend", "hf", "--seed", 1,
        "--max-length", 128)


def tmplcheck(*args):
    return subprocess.run([sys.executable, "-m", "tmplcheck", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from tmplcheck.trainer.tiny import build_tiny_model
    from tmplcheck.validator.tokenizer import load_tokenizer

    tiny = build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", load_tokenizer("llama-3").hf_dir,
                            shape="tiny")
    d = tmp_path_factory.mktemp("data")
    data = d / "tweets.jsonl"
    shutil.copy(TWEETS, data)
    r = tmplcheck("check", data, "--template", "llama-3", "--tokenizer", "llama-3", "--max-length", 128, "--approve")
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path_factory.mktemp("runs")
    one = tmplcheck("train", data, "--model", tiny, *ARGS, "--output", out / "one")
    assert one.returncode == 0, one.stderr
    two = tmplcheck("train", data, "--model", tiny, *ARGS, "--output", out / "two", "--nproc", 2)
    assert two.returncode == 0, two.stderr
    assert two.stdout.strip() == str(out / "two")
    return out / "one", out / "two", two, data, tiny


def _files(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def test_two_processes_write_the_run_one_process_writes(runs):
    one, two, r, _data, _tiny = runs
    assert _files(two) == _files(one)
    assert not list(two.parent.glob("two.tmp-*")) and not list(two.parent.glob("tmplcheck-rank*"))
    for f in ("eval.jsonl", "approval.json", "model/generation_config.json", "tokenizer/tokenizer_config.json",
              "tokenizer/chat_template.jinja"):
        assert (two / f).read_bytes() == (one / f).read_bytes(), f
    ca, cb = (json.loads((d / "model" / "adapter_config.json").read_text()) for d in (one, two))
    assert sorted(ca.pop("target_modules")) == sorted(cb.pop("target_modules"))   # PEFT writes a set
    assert ca == cb
    a, b = (json.loads((d / "run.json").read_text()) for d in (one, two))
    assert a.pop("created_at") and b.pop("created_at")
    assert (a.pop("processes"), b.pop("processes")) == (1, 2)
    assert (a.pop("per_process_batch_size"), b.pop("per_process_batch_size")) == (4, 2)
    assert a == b
    assert "2 processes (DDP, gloo)" in r.stderr
    assert r.stderr.count("approved by") == 1     # the stamp is checked once, by the launcher


def test_two_processes_train_what_one_process_trains(runs):
    import torch
    from safetensors.torch import load_file

    one, two, *_ = runs
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert (a["processes"], b["processes"]) == (1, 2)
    assert a["steps"] == b["steps"] == 3
    assert a["train_tokens"] == b["train_tokens"] > 0            # both processes' tokens counted
    assert a["trained_tokens_per_row"] == b["trained_tokens_per_row"]
    assert [x["step"] for x in b["loss"]] == [1, 2, 3]
    for x, y in zip(a["loss"], b["loss"]):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4)
    wa, wb = (load_file(str(d / "model" / "adapter_model.safetensors")) for d in (one, two))
    assert wa.keys() == wb.keys()
    moved = 0
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6), k
        moved += int("lora_B" in k and bool(wb[k].abs().sum() > 0))
    assert moved > 0                                             # it trained (LoRA B starts at zero)


def test_nproc_refusals(runs, tmp_path):
    _one, _two, _r, data, tiny = runs
    r = tmplcheck("train", data, "--model", tiny, *ARGS, "--output", tmp_path / "u", "--nproc", 2, "--backend",
                  "unsloth")
    assert r.returncode == 2 and "one GPU" in r.stderr
    r = tmplcheck("train", data, "--model", tiny, "--template", "llama-3", "--batch-size", 3, "--nproc", 2,
                  "--output", tmp_path / "b")
    assert r.returncode == 2 and "multiple of 2" in r.stderr
    assert not (tmp_path / "u").exists() and not (tmp_path / "b").exists()
