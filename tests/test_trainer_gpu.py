"""The trainer with the Unsloth backend on a CUDA GPU (marker ``gpu``; skipped unless CUDA and Unsloth are present).

Run by ``scripts/gpu-check`` on an offline CUDA machine. The same end-to-end path as the CPU tests: a random-init
Llama with the real Llama 3 vocabulary, a dataset stamped by the gate, a few LoRA steps — and then the things
Unsloth was seen changing on its own (pad token, eos, BOS) must be the trainer's choices in what was saved.
The tokenizer directory comes from ``$TMPLCHECK_GPU_TOKENIZER`` (set by scripts/gpu-check) or the built-in cache.

``RUNS`` is the plan: each run's data is approved with the settings it trains with (a full run packs into
``--max-length 64`` blocks, so its copy of the data is approved with ``--max-length 64``); the one test here that
needs no GPU checks that plan against the approval stamps, so a GPU run is never refused for a stamp mismatch.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest



def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(not _cuda() or importlib.util.find_spec("unsloth") is None,
                               reason="needs CUDA and Unsloth")

ROOT = Path(__file__).resolve().parent.parent
TWEETS = ROOT / "fixtures" / "train" / "tweets.jsonl"
EOT, END_OF_TEXT, BOS = 128009, 128001, 128000
#: mode -> (flags the data is approved with, flags it is trained with)
RUNS = {
    "lora": ([], []),
    "full": (["--max-length", "64"], ["--packing", "--max-length", "64"]),
}


def tmplcheck(*args):
    # -P: never import the source checkout's top folder as the package (it is installed into site-packages)
    return subprocess.run([sys.executable, "-P", "-m", "tmplcheck", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.fixture(scope="module")
def tokdir() -> str:
    env = os.environ.get("TMPLCHECK_GPU_TOKENIZER")
    if env:
        return env
    from tmplcheck.validator.tokenizer import load_tokenizer

    return str(load_tokenizer("llama-3").hf_dir)


def approved_data(base: Path, tokdir: str) -> dict[str, Path]:
    """One copy of the tweets per run in ``RUNS``, approved with that run's settings."""
    out = {}
    for mode, (approve, _) in RUNS.items():
        data = base / mode / "tweets.jsonl"
        data.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(TWEETS, data)
        r = tmplcheck("check", data, "--template", "llama-3", "--tokenizer", tokdir, *approve, "--approve")
        assert r.returncode == 0, r.stdout + r.stderr
        out[mode] = data
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokdir):
    from tmplcheck.trainer.tiny import build_tiny_model

    base = tmp_path_factory.mktemp("gpu")
    model = build_tiny_model(base / "model", tokdir, shape="small", dtype="bfloat16")
    return base, model, approved_data(base, tokdir)


def test_every_run_is_approved_for_its_settings(tmp_path, tokdir):
    """No GPU needed: the stamp written for each run matches the flags that run trains with (the full run
    once trained with --packing --max-length 64 on data approved without it, and was refused)."""
    from tmplcheck.trainer.recipe import Hooks, TrainConfig, approve

    for mode, data in approved_data(tmp_path, tokdir).items():
        train = RUNS[mode][1]
        max_length = int(train[train.index("--max-length") + 1]) if "--max-length" in train else None
        approve(TrainConfig(data=data, model="x/y", template="llama-3", tokenizer=tokdir, mode=mode,
                            packing="--packing" in train, max_length=max_length), Hooks())  # raises Refused


@gpu
@needs_gpu
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_unsloth_run(setup, tokdir, mode):
    base, model, data = setup
    data = data[mode]
    out = base / f"run-{mode}"
    r = tmplcheck("train", data, "--model", model, "--template", "llama-3", "--tokenizer", tokdir,
                  "--output", out, "--max-steps", 5, "--batch-size", 4, "--backend", "unsloth", "--mode", mode,
                  *RUNS[mode][1])
    assert r.returncode == 0, r.stdout + r.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["backend"] == "unsloth" and run["mode"] == mode and run["forced"] is False
    gen = json.loads((out / "model" / "generation_config.json").read_text())
    assert {END_OF_TEXT, EOT} <= set(gen["eos_token_id"])          # not rewritten to <|end_of_text|> alone
    assert gen["pad_token_id"] == run["pad_token_id"] not in gen["eos_token_id"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    assert tok.pad_token == run["pad_token"] and tok.pad_token_id not in (EOT, END_OF_TEXT)  # not Unsloth's pick
    assert tok.chat_template == run["template"]["source"]
    m = json.loads((out / "metrics.json").read_text())
    assert len(m["loss"]) == 5 and m["peak_memory_kind"] == "cuda_max_allocated" and m["tokens_per_s"] > 0
    assert str(run["versions"].get("unsloth", "")).startswith("2026.")


@gpu
@needs_gpu
def test_unsloth_run_loads_and_generates(setup, tokdir):
    from tmplcheck.trainer import load_run

    base, _, _ = setup
    model, tok, cfg = load_run(base / "run-lora")
    enc = tok.apply_chat_template([{"role": "user", "content": "The topic is: Cats"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True).to(model.device)
    assert enc["input_ids"][0].tolist().count(BOS) == 1  # no double BOS at inference either
    out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]
    assert {END_OF_TEXT, EOT} <= set(model.generation_config.eos_token_id)


@gpu
@needs_gpu
def test_auto_picks_unsloth():
    from tmplcheck.trainer.backends import resolve_backend

    assert resolve_backend("auto") == "unsloth"
