"""What a review of the Unsloth backend found, proven on the CPU with the hf backend (the same recipe code runs
under both; tests/test_unsloth_cpu.py drives Unsloth's own code): untrained embedding rows of a base model, a
--max-length past the model's positions, gradient checkpointing and the optimiser stated explicitly, the 16-bit
merge of a QLoRA run, and the tokenizer handed to the backend."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("trl")

from click.testing import CliRunner  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TWEETS = ROOT / "fixtures" / "train" / "tweets.jsonl"
BOS, HEADER_START, HEADER_END, EOT = 128000, 128006, 128007, 128009
#: a Llama 3 *base* model's untrained rows: the chat control tokens and the reserved ones (not BOS)
UNTRAINED = [HEADER_START, HEADER_END, EOT, *range(128010, 128040)]


def invoke(*args):
    from tmplcheck.cli import cli

    return CliRunner().invoke(cli, list(map(str, args)))


@pytest.fixture(scope="module")
def tokdir():
    from tmplcheck.validator.tokenizer import load_tokenizer

    return load_tokenizer("llama-3").hf_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokdir):
    from tmplcheck.trainer.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", tokdir, shape="tiny")


@pytest.fixture(scope="module")
def base_like(tmp_path_factory, tokdir):
    """The tiny model with a base model's zero rows (input and output embeddings) for the chat tokens."""
    from tmplcheck.trainer.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("base") / "model", tokdir, shape="tiny", untrained=UNTRAINED)


def data(tmp_path):
    p = tmp_path / "tweets.jsonl"
    shutil.copy(TWEETS, p)
    return p


# ------------------------------------------------------------------------------ a base model's untrained tokens
def test_untrained_rows_found_like_unsloth(base_like, tiny):
    from transformers import AutoModelForCausalLM

    from tmplcheck.trainer import embeddings as E

    assert E.untrained_rows(AutoModelForCausalLM.from_pretrained(base_like)) == set(UNTRAINED)
    assert E.untrained_rows(AutoModelForCausalLM.from_pretrained(tiny)) == set()


def test_lora_on_untrained_chat_tokens_is_refused_located(tmp_path, base_like):
    r = invoke("train", data(tmp_path), "--model", base_like, "--template", "llama-3", "--force", "--backend", "hf",
               "--output", tmp_path / "run", "--max-steps", 1, "--batch-size", 2)
    assert r.exit_code == 2, r.output
    assert "internal error" not in r.output and "Traceback" not in r.output
    for tok in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"):
        assert tok in r.output
    assert "first in line 1" in r.output                       # located in the data
    assert "--mode full" in r.output and "instruct" in r.output  # what to do about it
    assert not (tmp_path / "run").exists()


def test_full_fine_tune_resets_untrained_rows_to_the_mean(tmp_path, base_like):
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "run"
    r = invoke("train", data(tmp_path), "--model", base_like, "--template", "llama-3", "--force", "--backend", "hf",
               "--output", out, "--mode", "full", "--max-steps", 1, "--batch-size", 2, "--eval-split", 0)
    assert r.exit_code == 0, r.output
    assert "untrained embedding rows set to the mean" in r.output
    run = json.loads((out / "run.json").read_text())
    assert run["untrained_tokens_reset"] == [HEADER_START, HEADER_END, EOT]   # those the data uses, not all 33
    w = load_file(out / "model" / "model.safetensors")
    emb = w["model.embed_tokens.weight"]
    assert all(emb[i].abs().max() > 0 for i in (HEADER_START, HEADER_END, EOT))
    assert torch.equal(emb[128020], torch.zeros_like(emb[128020]))            # unused ones are left alone


# ------------------------------------------------------------------------------------------ the sequence length
def test_max_length_past_the_model_positions_is_refused(tmp_path, tokdir):
    from tmplcheck.trainer.tiny import build_tiny_model

    short = build_tiny_model(tmp_path / "short", tokdir, shape="tiny", max_position_embeddings=64)
    r = invoke("train", data(tmp_path), "--model", short, "--template", "llama-3", "--force", "--backend", "hf",
               "--output", tmp_path / "run", "--max-length", 128, "--max-steps", 1)
    assert r.exit_code == 2, r.output
    assert "max_position_embeddings (64)" in r.output and "--max-length 64" in r.output


def test_default_length_is_capped_at_the_model_positions(tmp_path, tokdir):
    from tmplcheck.trainer.tiny import build_tiny_model

    short = build_tiny_model(tmp_path / "short", tokdir, shape="tiny", max_position_embeddings=96)
    out = tmp_path / "run"
    r = invoke("train", data(tmp_path), "--model", short, "--template", "llama-3", "--force", "--backend", "hf",
               "--output", out, "--max-steps", 1, "--batch-size", 2, "--eval-split", 0)
    assert r.exit_code == 0, r.output
    assert json.loads((out / "run.json").read_text())["max_length"] == 96


# -------------------------------------------------------------------- optimiser and checkpointing, stated explicitly
def test_trainer_arguments_are_explicit_on_cpu(tmp_path, tiny, tokdir):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tmplcheck.trainer import backends as B
    from tmplcheck.trainer import data as D

    args = B.TrainArgs(max_steps=1, batch_size=2)
    model = B.attach_lora(AutoModelForCausalLM.from_pretrained(tiny), args)
    ds = datasets.Dataset.from_dict({"input_ids": [[BOS, 5, 6]], "labels": [[-100, 5, 6]]})
    tr = B.build_trainer("hf", model, AutoTokenizer.from_pretrained(tokdir), ds, D.Collator(0), args,
                         str(tmp_path / "w"), [])
    assert tr.args.gradient_checkpointing is False        # "off on the CPU", not TRL's default True
    assert str(getattr(tr.args.optim, "value", tr.args.optim)) == B.OPTIM == "adamw_torch_fused"
    gc = B.build_trainer("hf", model, AutoTokenizer.from_pretrained(tokdir), ds, D.Collator(0),
                         B.TrainArgs(max_steps=1, gradient_checkpointing=True), str(tmp_path / "w2"), [])
    assert gc.args.gradient_checkpointing is True


# ---------------------------------------------------------------------------------- --merge of a QLoRA run
def test_merge_of_a_4bit_run_reloads_the_base_in_16_bits(tmp_path, tiny, monkeypatch):
    """--load-in-4bit needs CUDA; here the load is the plain one, but the recipe takes the 4-bit route for the
    merge: base reloaded in 16 bits (float32 on the CPU) + the saved adapter, merged and saved."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tmplcheck.trainer import backends as B
    from tmplcheck.trainer.recipe import TrainConfig, run_training

    calls = []
    real_load, real_merge = B._load_hf, B.merge_16bit
    monkeypatch.setattr(B, "_load_hf", lambda path, args: real_load(path, B.TrainArgs(**{
        **args.__dict__, "load_in_4bit": False})))

    def spy(*a, **kw):
        calls.append(a)
        return real_merge(*a, **kw)

    monkeypatch.setattr(B, "merge_16bit", spy)
    out = tmp_path / "run"
    run_training(TrainConfig(data=data(tmp_path), model=str(tiny), template="llama-3", output=out, force=True,
                             backend="hf", load_in_4bit=True, merge=True, max_steps=2, batch_size=2, lr=1e-2,
                             eval_split=0))
    assert len(calls) == 1 and calls[0][0] == str(tiny)
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert "quantization_config" not in json.loads((out / "merged" / "config.json").read_text())
    assert merged.dtype == torch.float32
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny), out / "model").merge_and_unload()
    for (k, a), (_, b) in zip(merged.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), k
    base = AutoModelForCausalLM.from_pretrained(tiny).state_dict()
    assert not torch.equal(base["model.layers.0.self_attn.q_proj.weight"],
                           merged.state_dict()["model.layers.0.self_attn.q_proj.weight"])  # the adapter is in


# ----------------------------------------------------------------------- what the Unsloth loader is asked for
def test_unsloth_loader_arguments(monkeypatch, tmp_path):
    """Hub ids as named (no swap to an unsloth/ repo, no name-mapper lookup), the validated tokenizer's dir (a
    weights-only model dir has none), max_seq_length as given, checkpointing as decided — read off the call."""
    import sys
    import types

    from tmplcheck.trainer import backends as B

    seen = {}

    class FastLanguageModel:
        @staticmethod
        def from_pretrained(**kw):
            seen.update(kw)
            return object(), object()

    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(FastLanguageModel=FastLanguageModel))
    B.load_model("unsloth", "meta-llama/Meta-Llama-3-8B", B.TrainArgs(max_length=1024, gradient_checkpointing=False),
                 tokenizer_dir=str(tmp_path))
    assert seen["use_exact_model_name"] is True and seen["model_name"] == "meta-llama/Meta-Llama-3-8B"
    assert seen["tokenizer_name"] == str(tmp_path) and seen["max_seq_length"] == 1024
    assert seen["use_gradient_checkpointing"] is False


# ------------------------------------------------------------------------------------- the throughput benchmark
def test_bench_rows_are_as_long_as_it_says(tmp_path):
    """bench/train_throughput.py: --row-tokens 700 gives rows of ~700 tokens (they were ~927), and says so."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_throughput", ROOT / "bench" / "train_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    measured = bench.make_dataset(tmp_path / "b.jsonl", 48, 700, seed=0, tokenizer="llama-3")
    assert abs(measured - 700) < 0.05 * 700, measured
    assert len((tmp_path / "b.jsonl").read_text().splitlines()) == 48
    assert "~927 tokens" in bench.__doc__ and "row_tokens_measured" in bench.__doc__
