"""Our Unsloth backend driven through Unsloth's own code on the CPU (skipped where Unsloth is not installed:
``scripts/setup`` installs it; see the README's "What the CPU proves about Unsloth").

Two processes, because ``import unsloth`` patches transformers/TRL for the whole process and picks its backend once:

1. ``UNSLOTH_ALLOW_CPU=1`` (tests/unsloth_cpu_probe.py): Unsloth's CUDA code path without a GPU. Its generated
   ``UnslothSFTTrainer``/``UnslothSFTConfig`` — what ``trl.SFTTrainer`` is under Unsloth on a GPU — built by our
   ``build_trainer("unsloth")`` on a PEFT model, our pre-tokenised data and our collator, stepped twice: every
   forward gets our collator's ids and labels unchanged; the optimiser is ours (fused AdamW, not Unsloth's default
   ``adamw_8bit``); pad/eos are ours after its patches; a base model's zero embedding rows make Unsloth's trainer
   raise ``ValueError`` at init, which our backend turns into a clear error.
2. Unsloth's CPU backend (what ``import unsloth`` picks without a GPU): ``tmplcheck train --backend unsloth`` end to
   end (``FastLanguageModel.from_pretrained`` with our tokenizer from --tokenizer and a weights-only model dir,
   ``get_peft_model``, its CPU SFT trainer) saves the same stop ids, pad and tokenizer as the hf backend.
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

if importlib.util.find_spec("unsloth") is None:
    pytest.skip("Unsloth is not installed (scripts/setup installs it for these tests)", allow_module_level=True)
pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parent.parent
TWEETS = ROOT / "fixtures" / "train" / "tweets.jsonl"
BOS, END_OF_TEXT, EOT = 128000, 128001, 128009
CHAT = [128006, 128007, EOT]   # <|start_header_id|> <|end_header_id|> <|eot_id|>: a base model's untrained rows


def env(**extra) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("UNSLOTH_")}
    return {**e, "HF_HUB_OFFLINE": "1", "UNSLOTH_DISABLE_STATISTICS": "1", "PYTHONUNBUFFERED": "1", **extra}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from tmplcheck.trainer.tiny import build_tiny_model
    from tmplcheck.validator.tokenizer import load_tokenizer

    tokdir = load_tokenizer("llama-3").hf_dir
    d = tmp_path_factory.mktemp("unsloth-models")
    tiny = build_tiny_model(d / "tiny", tokdir, shape="tiny")
    base_like = build_tiny_model(d / "base-like", tokdir, shape="tiny", untrained=CHAT)
    weights = d / "weights-only"          # what a model dir holds without tokenizer files
    weights.mkdir()
    for p in tiny.iterdir():
        if p.name in ("config.json", "generation_config.json", "model.safetensors"):
            shutil.copy(p, weights / p.name)
    return tiny, base_like, weights


@pytest.fixture(scope="module")
def probe(models, tmp_path_factory):
    tiny, base_like, _ = models
    cwd = tmp_path_factory.mktemp("probe-cwd")
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "unsloth_cpu_probe.py"), str(tiny), str(base_like)],
                       capture_output=True, text=True, cwd=cwd, env=env(), timeout=600)
    line = next((x for x in r.stdout.splitlines() if x.startswith("PROBE ")), None)
    assert r.returncode == 0 and line, r.stdout[-4000:] + r.stderr[-6000:]
    return json.loads(line[6:]), cwd


def test_unsloth_generated_trainer_is_ours_to_drive(probe):
    res, _ = probe
    assert res["sft_trainer"] == res["trainer"] == "UnslothSFTTrainer"      # Unsloth's generated trainer ran
    assert res["config_default_optim"] == "adamw_8bit"   # trl.SFTConfig is Unsloth's generated config (shimmed)
    assert res["steps"] == 2 and res["grad_accum"] == 1 and res["weight_decay"] == 0.0  # not Unsloth's 2 / 0.001


def test_labels_reach_forward_unchanged(probe):
    res, _ = probe
    assert res["forwards"] >= 2 and all(res["forwards_match_collator"]), res["forwards_match_collator"]


def test_same_optimiser_as_the_hf_backend(probe):
    from tmplcheck.trainer.backends import OPTIM

    res, _ = probe
    assert res["config_default_optim"] == "adamw_8bit"          # what Unsloth's config would have used
    assert res["optim"] == OPTIM == "adamw_torch_fused"
    assert res["optimizer"] == "torch.optim.adamw.AdamW" and res["fused"] is True
    assert res["gradient_checkpointing"] is False                # off on the CPU, as on the hf backend


def test_pad_and_stops_are_ours_after_its_patches(probe):
    res, _ = probe
    assert res["config_pad"] == res["pad_id"] not in res["stops"]
    assert set(res["generation_eos"]) == set(res["stops"]) >= {END_OF_TEXT, EOT}
    assert res["tokenizer_pad"] == "<|reserved_special_token_250|>"


def test_untrained_tokens_under_unsloth(probe):
    res, _ = probe
    assert res["unsloth_on_untrained"].startswith("ValueError: Unsloth: Untrained tokens")   # the review's risk
    assert res["ours_on_untrained"].startswith("BackendError: Unsloth refused to train: the model has untrained")


def test_compiled_cache_not_in_the_working_directory(probe):
    from tmplcheck.trainer.backends import unsloth_compile_dir

    res, cwd = probe
    assert not (cwd / "unsloth_compiled_cache").exists()
    assert res["compile_location"] == unsloth_compile_dir()
    assert (Path(unsloth_compile_dir()) / "UnslothSFTTrainer.py").is_file()


# ------------------------------------------------------------------------------ Unsloth's CPU backend, end to end
def tmplcheck(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "tmplcheck", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env(), timeout=900)


@pytest.fixture(scope="module")
def runs(models, tmp_path_factory):
    tiny, _, weights = models
    d = tmp_path_factory.mktemp("unsloth-runs")
    data = d / "tweets.jsonl"
    shutil.copy(TWEETS, data)
    r = tmplcheck("check", data, "--template", "llama-3", "--tokenizer", "llama-3", "--approve")
    assert r.returncode == 0, r.stdout + r.stderr
    out = {}
    for backend, model in (("unsloth", weights), ("hf", tiny)):
        o = d / backend
        r = tmplcheck("train", data, "--model", model, "--template", "llama-3", "--tokenizer", "llama-3",
                      "--backend", backend, "--max-steps", 2, "--batch-size", 2, "--merge", "--seed", 1,
                      "--output", o, cwd=d)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
        out[backend] = (o, r)
    return out, d


def test_unsloth_cpu_backend_runs_end_to_end(runs):
    out, d = runs
    o, r = out["unsloth"]
    assert "Unsloth 2026.10.9: no GPU found, training on CPU" in r.stdout + r.stderr   # Unsloth's own CPU path
    run = json.loads((o / "run.json").read_text())
    assert run["backend"] == "unsloth" and run["versions"]["unsloth"] == "2026.10.9"
    assert len(json.loads((o / "metrics.json").read_text())["loss"]) == 2
    assert (o / "merged" / "model.safetensors").is_file()
    assert not (d / "unsloth_compiled_cache").exists()


def test_unsloth_saves_what_the_hf_backend_saves(runs):
    from transformers import AutoTokenizer

    out, _ = runs
    (u, _), (h, _) = out["unsloth"], out["hf"]
    ru, rh = (json.loads((x / "run.json").read_text()) for x in (u, h))
    for key in ("stop_ids", "pad_token", "pad_token_id", "bos_token_id"):
        assert ru[key] == rh[key], key
    for sub in ("model", "merged"):
        gu, gh = (json.loads((x / sub / "generation_config.json").read_text()) for x in (u, h))
        assert gu["eos_token_id"] == gh["eos_token_id"] and {END_OF_TEXT, EOT} <= set(gu["eos_token_id"])
        assert gu["pad_token_id"] == gh["pad_token_id"] not in gu["eos_token_id"] and gu["bos_token_id"] == BOS
    tu, th = (AutoTokenizer.from_pretrained(str(x / "tokenizer")) for x in (u, h))
    assert tu.pad_token == th.pad_token == "<|reserved_special_token_250|>"
    assert tu.chat_template == th.chat_template


def test_unsloth_run_loads_for_generation(runs):
    from tmplcheck.trainer import load_run

    out, _ = runs
    model, tok, cfg = load_run(out["unsloth"][0], device="cpu")
    enc = tok.apply_chat_template([{"role": "user", "content": "The topic is: Cats"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    assert enc["input_ids"][0].tolist().count(BOS) == 1
    assert model.generate(**enc, max_new_tokens=3, do_sample=False).shape[1] > enc["input_ids"].shape[1]
