"""The trainer on CPU, end to end: a real tiny Llama (random init, the real 128k Llama 3 vocabulary) trained a few
steps with the hf backend from a dataset stamped by the gate; then what it saved, and every refusal path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("trl")

from click.testing import CliRunner  # noqa: E402

from tmplcheck.trainer import data as D  # noqa: E402
from tmplcheck.trainer import special as S  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TWEETS = ROOT / "fixtures" / "train" / "tweets.jsonl"
EOT, END_OF_TEXT, BOS = 128009, 128001, 128000


def tmplcheck(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "tmplcheck", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT)


def invoke(*args):
    from tmplcheck.cli import cli

    return CliRunner().invoke(cli, list(map(str, args)))


@pytest.fixture(scope="module")
def llama3():
    from tmplcheck.templates import load_template
    from tmplcheck.validator.tokenizer import load_tokenizer

    return load_template("llama-3"), load_tokenizer("llama-3")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, llama3):
    from tmplcheck.trainer.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", llama3[1].hf_dir, shape="tiny")


@pytest.fixture(scope="module")
def stamped(tmp_path_factory):
    """The tweets fixture, approved by the real gate (`check --template --tokenizer --approve`)."""
    d = tmp_path_factory.mktemp("data")
    data = d / "tweets.jsonl"
    shutil.copy(TWEETS, data)
    r = tmplcheck("check", data, "--template", "llama-3", "--tokenizer", "llama-3", "--approve")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (d / "tweets.jsonl.tmplcheck.json").is_file()
    return data


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny, stamped):
    out = tmp_path_factory.mktemp("runs") / "lora"
    r = tmplcheck("train", stamped, "--model", tiny, "--template", "llama-3", "--output", out, "--max-steps", 3,
                  "--batch-size", 4, "--backend", "hf", "--merge", "--seed", 1)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == str(out)
    return out, r


# ------------------------------------------------------------------------------------------ labels, BOS, pad, stops
def test_labels_are_assistant_content_plus_eot(llama3):
    template, tok = llama3
    convs = D.read_conversations(TWEETS).convs
    examples = list(D.encode(convs, template, tok, max_length=None))
    assert len(examples) == 24
    for conv, ex in zip(convs, examples):
        trained = [i for i, lab in zip(ex.ids, ex.labels) if lab != D.IGNORE]
        assert [lab for lab in ex.labels if lab != D.IGNORE] == trained  # labels are the ids themselves
        assert tok.decode(trained) == conv.messages[-1].content + "<|eot_id|>"
        assert trained[-1] == EOT
        assert ex.ids[0] == BOS and ex.ids.count(BOS) == 1  # no double BOS


def test_loss_on_all_labels_every_token(llama3):
    """--loss-on all: labels are the ids themselves (the naive pipeline); assistant: the verified masks."""
    from tmplcheck.validator.tokens import encode_conversation

    template, tok = llama3
    convs = D.read_conversations(TWEETS).convs
    every = list(D.encode(convs, template, tok, max_length=None, loss_on="all"))
    masked = list(D.encode(convs, template, tok, max_length=None, loss_on="assistant"))
    for conv, a, m in zip(convs, every, masked):
        assert a.ids == m.ids and a.labels == a.ids and a.trained == len(a.ids)
        enc = encode_conversation(template, tok, conv.dicts(), add_special_tokens=D.add_special_tokens_for(
            template, tok))
        assert m.labels == list(enc.labels) and D.IGNORE in m.labels and m.trained < len(m.ids)
    blocks = D.pack(every, 32)
    assert all(b["labels"] == b["input_ids"] for b in blocks)
    with pytest.raises(D.DataError, match="loss-on"):
        list(D.encode(convs[:1], template, tok, max_length=None, loss_on="prompt"))


def test_double_bos_is_refused():
    S.check_bos([BOS, 5, 6], BOS, where="x")
    with pytest.raises(S.TokenSetupError, match="BOS twice"):
        S.check_bos([BOS, BOS, 5], BOS, where="line 3")


def test_packing_keeps_labels_with_their_ids(llama3):
    template, tok = llama3
    examples = list(D.encode(D.read_conversations(TWEETS).convs, template, tok, max_length=None))
    blocks = D.pack(examples, 32)
    assert all(len(b["input_ids"]) == 32 for b in blocks[:-1]) and 0 < len(blocks[-1]["input_ids"]) <= 32
    assert sum((b["input_ids"] for b in blocks), []) == sum((e.ids for e in examples), [])
    assert sum((b["labels"] for b in blocks), []) == sum((e.labels for e in examples), [])


def test_stop_ids_hold_eot_and_eos(llama3):
    template, tok = llama3
    stops = S.stop_ids(template, tok)
    assert {END_OF_TEXT, EOT} <= set(stops)


def test_template_tokens_missing_from_vocab(llama3):
    from tmplcheck.templates import load_template

    with pytest.raises(S.TokenSetupError, match="<\\|im_end\\|>"):
        S.stop_ids(load_template("chatml"), llama3[1])


def test_pad_choice(llama3):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(llama3[1].hf_dir))
    pad = S.choose_pad(hf, avoid_ids={END_OF_TEXT, EOT, BOS})
    assert pad.token == "<|reserved_special_token_250|>" and not pad.added and pad.id not in {EOT, END_OF_TEXT}

    class Vocab:
        pad_token = "<|eot_id|>"  # a tokenizer that pads with the end-of-turn token: never kept

        def get_vocab(self):
            return {"a": 0, "<|eot_id|>": 1, "<pad>": 2}

    assert S.choose_pad(Vocab(), avoid_ids={1}).token == "<pad>"
    assert S.choose_pad(Vocab(), avoid_ids={1, 2}) == S.PadChoice(S.ADDED_PAD, None, True, S.choose_pad(
        Vocab(), avoid_ids={1, 2}).reason)


# ----------------------------------------------------------------------------------------------- a LoRA run, saved
def test_run_dir_contents(lora_run):
    out, r = lora_run
    assert sorted(p.name for p in out.iterdir()) == ["approval.json", "eval.jsonl", "merged", "metrics.json",
                                                     "model", "run.json", "tokenizer"]
    assert not list(out.parent.glob("lora.tmp-*"))
    assert {"adapter_config.json", "adapter_model.safetensors", "generation_config.json"} <= {
        p.name for p in (out / "model").iterdir()}


def test_generation_config_has_every_stop_id(lora_run):
    out, _ = lora_run
    for d in ("model", "merged"):
        gen = json.loads((out / d / "generation_config.json").read_text())
        assert {END_OF_TEXT, EOT} <= set(gen["eos_token_id"]), d
        assert gen["pad_token_id"] not in gen["eos_token_id"]
        assert gen["bos_token_id"] == BOS


def test_saved_tokenizer_carries_template_and_pad(lora_run, llama3):
    from transformers import AutoTokenizer

    out, _ = lora_run
    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    assert tok.chat_template == llama3[0].source
    assert tok.pad_token == "<|reserved_special_token_250|>"
    assert tok.pad_token_id not in (EOT, END_OF_TEXT)


def test_run_json_and_approval(lora_run, stamped):
    out, _ = lora_run
    run = json.loads((out / "run.json").read_text())
    assert run["forced"] is False and run["mode"] == "lora" and run["backend"] == "hf" and run["packing"] is False
    assert {END_OF_TEXT, EOT} <= set(run["stop_ids"])
    assert run["template"]["name"] == "llama-3" and run["template"]["source"] == (out / "tokenizer" /
                                                                                   "chat_template.jinja").read_text()
    assert run["seed"] == 1 and run["merged"] is True and run["lora"]["r"] == 16
    stamp = json.loads(stamped.with_name(stamped.name + ".tmplcheck.json").read_text())
    assert json.loads((out / "approval.json").read_text()) == stamp


def test_metrics_and_eval_split(lora_run, llama3):
    out, _ = lora_run
    m = json.loads((out / "metrics.json").read_text())
    assert [x["step"] for x in m["loss"]] == [1, 2, 3] and all(x["loss"] > 0 for x in m["loss"])
    assert m["tokens_per_s"] > 0 and m["peak_memory_bytes"] > 0 and m["train_tokens"] > 0
    eval_lines = (out / "eval.jsonl").read_text().splitlines()
    fixture_lines = TWEETS.read_text().splitlines()
    assert len(eval_lines) == 2 and set(eval_lines) <= set(fixture_lines)
    # trained tokens per row = the assistant reply + <|eot_id|>, for every training row
    per_row = m["trained_tokens_per_row"]
    assert len(per_row) == 22 and {r["line"] for r in per_row}.isdisjoint(
        {fixture_lines.index(e) + 1 for e in eval_lines})
    tok = llama3[1]
    for r in per_row:
        reply = json.loads(fixture_lines[r["line"] - 1])["conversations"][-1]["value"]
        assert r["trained"] == len(tok.encode(reply, add_special_tokens=False).ids) + 1


def test_load_run_generates_with_saved_stops(lora_run):
    from tmplcheck.trainer import load_run

    out, _ = lora_run
    model, tok, cfg = load_run(out, device="cpu")
    assert cfg["mode"] == "lora" and {END_OF_TEXT, EOT} <= set(model.generation_config.eos_token_id)
    enc = tok.apply_chat_template([{"role": "user", "content": "The topic is: Cats"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    assert enc["input_ids"][0].tolist().count(BOS) == 1
    gen = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] > enc["input_ids"].shape[1]


# ------------------------------------------------------------------------------------------------------- refusals
def _refused(result, *words):
    assert result.exit_code == 2, result.output
    for w in words:
        assert w in result.output, result.output


def test_refuses_without_stamp(tmp_path, tiny):
    data = tmp_path / "d.jsonl"
    shutil.copy(TWEETS, data)
    r = invoke("train", data, "--model", tiny, "--template", "llama-3", "--output", tmp_path / "run")
    _refused(r, "no approval stamp", "--approve")
    assert not (tmp_path / "run").exists()


@pytest.fixture
def stamped_copy(tmp_path, stamped):
    data = tmp_path / "tweets.jsonl"
    shutil.copy(stamped, data)
    shutil.copy(stamped.with_name(stamped.name + ".tmplcheck.json"), tmp_path / "tweets.jsonl.tmplcheck.json")
    return data


def test_refuses_changed_bytes(stamped_copy, tiny, tmp_path):
    stamped_copy.write_text(stamped_copy.read_text().replace("MY CAT", "MY DOG"))
    r = invoke("train", stamped_copy, "--model", tiny, "--template", "llama-3", "--output", tmp_path / "run")
    _refused(r, "bytes changed", "bytes: the dataset changed")


def test_refuses_changed_template(stamped_copy, tiny, tmp_path, llama3):
    broken = tmp_path / "llama-3-no-eot.jinja"
    broken.write_text(llama3[0].source.replace("| trim + '<|eot_id|>'", "| trim"))
    r = invoke("train", stamped_copy, "--model", tiny, "--template", broken, "--output", tmp_path / "run")
    _refused(r, "template changed", "llama-3-no-eot.jinja")


def test_refuses_changed_tokenizer(stamped_copy, tiny, tmp_path, llama3):
    tdir = tmp_path / "tok"
    shutil.copytree(llama3[1].hf_dir, tdir)
    gen = tdir / "generation_config.json"
    gen.write_text(json.dumps({"bos_token_id": BOS, "eos_token_id": END_OF_TEXT}))
    r = invoke("train", stamped_copy, "--model", tiny, "--template", "llama-3", "--tokenizer", tdir,
               "--output", tmp_path / "run")
    _refused(r, "tokenizer changed", "generation_config.json")


def test_refuses_changed_config(stamped_copy, tiny, tmp_path):
    r = invoke("train", stamped_copy, "--model", tiny, "--template", "llama-3", "--max-length", 64,
               "--output", tmp_path / "run")
    _refused(r, "config changed", "max_length: None → 64")


def test_missing_model(stamped_copy, tmp_path):
    r = invoke("train", stamped_copy, "--model", tmp_path / "nope", "--template", "llama-3")
    _refused(r, "no such directory")


def test_revalidate_refuses_failing_data(tmp_path, tiny):
    data = tmp_path / "bad.jsonl"
    shutil.copy(ROOT / "fixtures" / "dataset" / "empty_content.jsonl", data)
    r = invoke("train", data, "--model", tiny, "--template", "llama-3", "--revalidate", "--output", tmp_path / "r")
    _refused(r, "the gate found", "D013")
    assert not (tmp_path / "bad.jsonl.tmplcheck.json").exists()


def test_revalidate_stamps_passing_data(tmp_path):
    from tmplcheck.trainer.recipe import Hooks, TrainConfig, approve
    from tmplcheck.validator.approval import verify_stamp
    from tmplcheck.validator.stages import StageConfig

    data = tmp_path / "d.jsonl"
    shutil.copy(TWEETS, data)
    stamp, tok_spec, max_length, revalidated = approve(
        TrainConfig(data=data, model="x/y", template="llama-3", revalidate=True), Hooks())
    assert revalidated and tok_spec == "llama-3" and stamp["summary"]["passed"]
    # --revalidate checks for training (K005 an info: the run writes the stop set) and stamps that setting
    assert stamp["config"]["settings"]["for_train"] is True
    assert verify_stamp(data, "llama-3", "llama-3", StageConfig(template="llama-3", tokenizer="llama-3",
                                                                extra={"for_train": True})) == []


# ---------------------------------------------------------------------------- forced full fine-tune with packing
def test_forced_full_packed_run(tmp_path, tiny):
    data = tmp_path / "unapproved.jsonl"
    shutil.copy(TWEETS, data)
    out = tmp_path / "full"
    r = invoke("train", data, "--model", tiny, "--template", "llama-3", "--output", out, "--force", "--mode", "full",
               "--packing", "--max-length", 48, "--max-steps", 2, "--batch-size", 2, "--lr", "1e-3",
               "--eval-split", 0)
    assert r.exit_code == 0, r.output
    assert "NOT approved" in r.output and "forced" in r.output
    run = json.loads((out / "run.json").read_text())
    assert run["forced"] is True and run["approval"] is None and run["mode"] == "full" and run["packing"] is True
    assert not (out / "approval.json").exists()
    assert {"config.json", "model.safetensors", "generation_config.json"} <= {p.name for p in (out / "model").iterdir()}
    gen = json.loads((out / "model" / "generation_config.json").read_text())
    assert {END_OF_TEXT, EOT} <= set(gen["eos_token_id"])
    m = json.loads((out / "metrics.json").read_text())
    total = sum(r["tokens"] for r in m["trained_tokens_per_row"])
    assert run["max_length"] == 48 and run["rows"]["sequences"] == -(-total // 48)  # packed into 48-token blocks
    assert m["steps"] == 2 and m["train_tokens"] == 2 * 2 * 48  # every consumed block is full
    assert (out / "eval.jsonl").read_text() == ""


def test_loss_on_all_is_loud_and_recorded(tmp_path, tiny, stamped, lora_run):
    out = tmp_path / "all"
    r = invoke("train", stamped, "--model", tiny, "--template", "llama-3", "--output", out, "--mode", "full",
               "--max-steps", 1, "--batch-size", 2, "--eval-split", 0, "--loss-on", "all")
    assert r.exit_code == 0, r.output
    assert r.output.count("--loss-on all: every token is a label") == 2  # before and after, like --force
    run = json.loads((out / "run.json").read_text())
    assert run["loss_on"] == "all" and run["forced"] is False
    m = json.loads((out / "metrics.json").read_text())
    assert all(row["trained"] == row["tokens"] for row in m["trained_tokens_per_row"])
    default = lora_run[0]
    assert json.loads((default / "run.json").read_text())["loss_on"] == "assistant"
    dm = json.loads((default / "metrics.json").read_text())
    assert all(row["trained"] < row["tokens"] for row in dm["trained_tokens_per_row"])


def test_interrupted_run_leaves_nothing(tmp_path, tiny):
    from tmplcheck.trainer.recipe import Hooks, TrainConfig, TrainError, run_training

    data = tmp_path / "d.jsonl"
    shutil.copy(TWEETS, data)
    out = tmp_path / "run"

    def interrupt(step, total):
        if step >= 1:
            raise KeyboardInterrupt

    cfg = TrainConfig(data=data, model=str(tiny), template="llama-3", output=out, force=True, max_steps=3,
                      batch_size=2, backend="hf")
    with pytest.raises(TrainError, match="interrupted"):
        run_training(cfg, Hooks(progress=interrupt))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]
