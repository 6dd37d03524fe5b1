"""``tmplcheck audit`` beyond one fixture per code (tests/test_manifest.py): input formats, bad input, the mask
sources, padding and packing as real collators make them, ``--show``, the reporters, ``--train-on``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tmplcheck.cli import cli

ROOT = Path(__file__).resolve().parent.parent
AUD = ROOT / "fixtures" / "audit"


def rows(name: str) -> list[dict]:
    return [json.loads(x) for x in (AUD / name).read_text().splitlines() if x.strip()]


def audit(data, *extra: str, template: str = "llama-3", tokenizer: str = "llama-3"):
    r = CliRunner().invoke(cli, ["audit", str(data), "--template", template, "--tokenizer", tokenizer, *extra])
    return r.exit_code, r.output


def audit_json(data, *extra: str, **kw):
    code, out = audit(data, "--format", "json", *extra, **kw)
    start = out.find("{")
    assert start >= 0, out
    return code, json.loads(out[start:])


@pytest.fixture(scope="module")
def st():
    from tmplcheck.templates import load_template
    from tmplcheck.validator.tokenized_audit import build_structure
    from tmplcheck.validator.tokenizer import load_tokenizer

    return build_structure(load_template("llama-3"), load_tokenizer("llama-3"))


# ----------------------------------------------------------------------------------------------------- formats
@pytest.mark.parametrize("fmt", ["parquet", "arrow", "disk", "dict-split", "json-list"])
def test_every_format_gives_the_same_findings(fmt, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = rows("clean.jsonl") + rows("end_of_turn_masked.jsonl")
    for r in data:
        r.setdefault("attention_mask", [1] * len(r["input_ids"]))
    table = pa.Table.from_pylist(data)
    if fmt == "parquet":
        p = tmp_path / "d.parquet"
        pq.write_table(table, p)
    elif fmt == "arrow":
        p = tmp_path / "d.arrow"
        with pa.OSFile(str(p), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
    elif fmt in ("disk", "dict-split"):
        from datasets import Dataset, DatasetDict

        ds = Dataset.from_list(data)
        p = tmp_path / "d"
        (DatasetDict({"train": ds, "test": ds.select([0])}) if fmt == "dict-split" else ds).save_to_disk(str(p))
    else:
        p = tmp_path / "d.json"
        p.write_text(json.dumps(data))
    code, out = audit_json(p)
    assert code == 1 and out["summary"]["by_code"] == {"L003": 1}, out
    assert out["findings"][0]["data"]["row"] == 3 and out["findings"][0]["pointer"] == "/labels/32"


def test_datasetdict_split_choice(tmp_path):
    from datasets import Dataset, DatasetDict

    p = tmp_path / "d"
    DatasetDict({"a": Dataset.from_list(rows("clean.jsonl")),
                 "b": Dataset.from_list(rows("row_untrained.jsonl"))}).save_to_disk(str(p))
    code, out = audit(p)
    assert code == 2 and "--split" in out
    assert audit(p, "--split", "a")[0] == 0
    assert audit(p, "--split", "b")[0] == 1


# --------------------------------------------------------------------------------------------------- bad input
def test_columnar_dataset_without_input_ids_is_a_clear_usage_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"text": "hello", "labels": [1, 2]}]), p)
    code, out = audit(p)
    assert code == 2 and "no input_ids column" in out and "text, labels" in out


@pytest.mark.parametrize("row, where", [
    ({"labels": [1]}, "no input_ids"),
    ({"input_ids": [128000, 5, 128256]}, "input_ids[2] = 128256 is outside the tokenizer's vocabulary"),
    ({"input_ids": [128000, -1]}, "input_ids[1] = -1 is outside"),
    ({"input_ids": [128000, 5], "labels": [5]}, "labels has 1 values for 2 input_ids"),
    ({"input_ids": [128000, 5], "attention_mask": [1, 1, 1]}, "attention_mask has 3 values"),
    ({"input_ids": [128000, "x"]}, "input_ids[1] is 'x'"),
    ({"input_ids": [128000, 5.5]}, "input_ids[1] is 5.5"),
    ({"input_ids": "hello"}, "input_ids is a str"),
    ({"input_ids": [[1, 2], [3, 4]]}, "nested"),
    ({"input_ids": [128000, 5], "labels": [5, None]}, "labels[1] is None"),
    ({"input_ids": [128000, 5, 6, 7], "labels": [5, 6, 7, -100]}, "the labels are shifted by one"),
    ({"input_ids": [128000, 5, 6, 7], "labels": [-100, 5, 9, 7]}, "labels[2] = 9 but input_ids[2] = 6"),
])
def test_bad_rows_are_located_findings(row, where, tmp_path):
    p = tmp_path / "d.jsonl"
    good = rows("clean.jsonl")[0]
    p.write_text(json.dumps(good) + "\n\n" + json.dumps(row) + "\n[1, 2]\n{bad json\n")
    code, out = audit_json(p)
    assert code == 1
    fs = out["findings"]
    assert [f["code"] for f in fs] == ["L012"] * 3, fs
    assert fs[0]["line"] == 3 and where in fs[0]["message"] and fs[0]["data"]["row"] == 1, fs[0]
    assert fs[1]["line"] == 4 and "not an object" in fs[1]["message"]
    assert fs[2]["line"] == 5 and "not valid JSON" in fs[2]["message"]


def test_unreadable_or_unknown_inputs_exit_2(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    assert audit(tmp_path / "x.csv")[0] == 2
    assert audit(tmp_path / "missing.jsonl")[0] == 2
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    code, out = audit(tmp_path / "bad.parquet")
    assert code == 2 and "Parquet" in out
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, out = audit_json(empty)
    assert code == 1 and out["summary"]["by_code"] == {"L012": 1}


# ------------------------------------------------------------------------------------------------ mask sources
def test_assistant_masks_and_completion_mask_columns(st):
    from tmplcheck.validator.tokenized_audit import audit_row

    r = rows("clean.jsonl")[1]
    mask = [int(x != -100) for x in r["labels"]]
    assert audit_row({"input_ids": r["input_ids"], "assistant_masks": mask}, st, index=0).findings == []
    res = audit_row({"input_ids": r["input_ids"], "assistant_masks": mask, "completion_mask": [0] * len(mask)},
                    st, index=0)
    assert [f.code for f in res.findings] == ["L004"] and res.findings[0].pointer == ""
    res = audit_row({"input_ids": r["input_ids"]}, st, index=0)    # no labels, no masks: everything trains
    assert [f.code for f in res.findings] == ["L001"] and res.findings[0].pointer == "/input_ids/0"


def test_left_padding_and_padding_trained(st):
    from tmplcheck.validator.tokenized_audit import audit_row

    r = rows("clean.jsonl")[0]
    ids, lab = [128004] * 3 + r["input_ids"], [-100] * 3 + r["labels"]
    am = [0] * 3 + [1] * len(r["input_ids"])
    assert audit_row({"input_ids": ids, "labels": lab, "attention_mask": am}, st, index=0).findings == []
    res = audit_row({"input_ids": ids, "labels": [128004] * 3 + r["labels"], "attention_mask": am}, st, index=0)
    assert [f.code for f in res.findings] == ["L001"] and "padding" in res.findings[0].message


def test_train_on_last_assistant(tmp_path):
    assert audit(AUD / "only_last_turn.jsonl", "--train-on", "last-assistant")[0] == 0
    code, out = audit_json(AUD / "clean.jsonl", "--train-on", "last-assistant")
    assert code == 1 and out["summary"]["by_code"] == {"L001": 1}
    assert "not chosen for training" in out["findings"][0]["message"]


def test_trl_padding_free_batch_keeps_packed_conversations_apart(st):
    """TRL's own collator packing rows (padding_free=True): position ids restart, each first token is masked."""
    pytest.importorskip("trl")
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from tmplcheck.validator.tokenized_audit import audit_rows, batch_rows

    data = rows("clean.jsonl")[:2]
    batch = DataCollatorForLanguageModeling(pad_token_id=128004, padding_free=True)(
        [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in data])
    assert batch["input_ids"].shape[0] == 1
    fs, summary = audit_rows(batch_rows(batch), st)
    assert fs == [] and summary["passed"]
    del batch["position_ids"]
    fs, _ = audit_rows(batch_rows(batch), st)
    assert [f.code for f in fs] == ["L011"]


# ------------------------------------------------------------------------------------------ show and reporters
def test_show_prints_expected_beside_actual():
    code, out = audit(AUD / "end_of_turn_masked.jsonl", "--show", "0")
    assert code == 1 and "expected" in out and "actual" in out and "≠" in out and "L003" in out
    code, out = audit(AUD / "end_of_turn_masked.jsonl", "--show", "0", "--format", "json")
    table = json.loads(out)
    bad = [t for t in table["tokens"] if t["mismatch"]]
    assert [(t["index"], t["token"], t["region"]) for t in bad] == [(32, "<|eot_id|>", "assistant:end-of-turn")]
    assert audit(AUD / "clean.jsonl", "--show", "0")[0] == 0
    assert audit(AUD / "clean.jsonl", "--show", "9")[0] == 2


def test_show_tokenized_is_the_audits_view():
    """`tmplcheck show --tokenized` shows an audited row exactly as `audit --show` does (by row or by JSONL line)."""
    def show(*extra):
        r = CliRunner().invoke(cli, ["show", str(AUD / "end_of_turn_masked.jsonl"), "--tokenized", "-t", "llama-3",
                                     "-k", "llama-3", "--format", "json", *extra])
        return r.exit_code, r.output

    code, out = audit(AUD / "end_of_turn_masked.jsonl", "--show", "0", "--format", "json")
    assert show("--row", "0") == (code, out) and code == 1
    first_line = next(i for i, x in enumerate((AUD / "end_of_turn_masked.jsonl").read_text().splitlines(), 1)
                      if x.strip())
    assert show("--line", str(first_line)) == (code, out)
    assert show("--row", "99")[0] == 2 and show()[0] == 2


@pytest.mark.parametrize("fmt", ["text", "jsonl", "junit", "sarif", "github"])
def test_reporters(fmt):
    code, out = audit(AUD / "double_bos.jsonl", "--format", fmt)
    assert code == 1 and "L008" in out
    assert audit(AUD / "double_bos.jsonl", "--format", fmt, "--exit-zero")[0] == 0
    assert audit(AUD / "double_bos.jsonl", "--ignore", "L008")[0] == 0


def test_rule_lists_the_l_codes():
    r = CliRunner().invoke(cli, ["rule"])
    assert all(f"L{i:03d}" in r.output for i in range(1, 15))
    assert "pad = eos" in CliRunner().invoke(cli, ["rule", "L006"]).output


def test_wrong_template_is_l013_and_template_from_the_tokenizer_dir(tmp_path):
    code, out = audit_json(AUD / "clean.jsonl", template="chatml")
    assert code == 1 and set(out["summary"]["by_code"]) == {"L013"}


# ------------------------------------------------------------------------------------------------- callback core
def test_callback_audits_batches_without_a_trainer():
    pytest.importorskip("transformers")
    from tmplcheck.integrations import AuditCallback

    cb = AuditCallback(template="llama-3", tokenizer="llama-3", batches=1)
    good, bad = rows("clean.jsonl")[0], rows("end_of_turn_masked.jsonl")[0]
    fs = cb.audit_batches([{"input_ids": [bad["input_ids"]], "labels": [bad["labels"]]},
                           {"input_ids": [good["input_ids"]], "labels": [good["labels"]]}])
    assert [f.code for f in fs] == ["L003"] and cb.audited_rows == 1     # only the first batch
    assert "L003" in cb.report()


def test_core_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys; import tmplcheck.validator.tokenized_audit, tmplcheck.tokenized_data; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


# ------------------------------------------------------------------------------------ every registry template
def _registry_pairs():
    from tmplcheck.templates import registry

    return sorted((name, m.default_tokenizer) for name, m in registry().items() if m.default_tokenizer)


@pytest.mark.parametrize("name, tokenizer", _registry_pairs())
def test_tmplchecks_own_labels_pass_and_a_masked_end_of_turn_does_not(name, tokenizer, get_tokenizer):
    """The audit agrees with the gate's verified labels (encode_conversation) on every built-in template with a
    default tokenizer — byte-level BPE (Llama 3, Qwen2) and SentencePiece (Llama 2, Phi-3, whose added tokens
    strip the newline after them) — and finds the end-of-turn masked."""
    from tmplcheck.templates import load_template, registry
    from tmplcheck.validator.tokenized_audit import audit_row, build_structure
    from tmplcheck.validator.tokens import encode_conversation

    tok, tmpl = get_tokenizer(tokenizer), load_template(name)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "A colour?"},
            {"role": "assistant", "content": "Blue."}]
    if not registry()[name].system_role:
        msgs = msgs[1:]
    enc = encode_conversation(tmpl, tok, msgs)
    st = build_structure(tmpl, tok)
    assert audit_row({"input_ids": list(enc.ids), "labels": list(enc.labels)}, st, index=0).findings == []
    masked = [-100 if i in st.eot_ids else lab for i, lab in zip(enc.ids, enc.labels)]
    res = audit_row({"input_ids": list(enc.ids), "labels": masked}, st, index=0)
    assert [f.code for f in res.findings] == ["L003"] and len(res.findings[0].data["positions"]) == 2


def test_trl_padding_free_chatml_packing_is_found_by_position_ids(get_tokenizer):
    """ChatML writes no BOS: packed conversations are told apart by the restarts of TRL's position ids; a label on
    a restart's token (a collator that does not mask it) is L010."""
    pytest.importorskip("trl")
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from tmplcheck.templates import load_template
    from tmplcheck.validator.tokenized_audit import audit_rows, batch_rows, build_structure
    from tmplcheck.validator.tokens import encode_conversation

    tok, tmpl = get_tokenizer("qwen2"), load_template("chatml")
    st = build_structure(tmpl, tok)
    encs = [encode_conversation(tmpl, tok, [{"role": "user", "content": q}, {"role": "assistant", "content": a}])
            for q, a in (("Hi", "Hello!"), ("2+2?", "4"))]
    batch = DataCollatorForLanguageModeling(pad_token_id=tok.pad_id or 0, padding_free=True)(
        [{"input_ids": list(e.ids), "labels": list(e.labels)} for e in encs])
    fs, _ = audit_rows(batch_rows(batch), st)
    assert fs == []
    second = len(encs[0].ids)
    batch["labels"][0, second] = batch["input_ids"][0, second]
    fs, _ = audit_rows(batch_rows(batch), st)
    assert [(f.code, f.data["tokens"]) for f in fs] == [("L010", [second, second + 1])]


def test_dataset_id_from_the_local_hub_cache(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "datasets--me--tokenized"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    data = repo / "snapshots" / rev / "data"
    data.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows("clean.jsonl")), data / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(rows("row_untrained.jsonl")), data / "test-00000-of-00001.parquet")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert audit("me/tokenized")[0] == 0
    code, out = audit_json("me/tokenized", "--split", "test")
    assert code == 1 and out["summary"]["by_code"] == {"L004": 1}
    code, out = audit("me/not-cached")
    assert code == 2 and "not a dataset in the local Hugging Face cache" in out


@pytest.mark.parametrize("trl_template, ours, tokenizer, conventional", [
    ("llama3_training", "llama-3", "llama-3", False), ("qwen2_5_training", "qwen2.5", "qwen2", True),
    ("phi3_training", "phi-3", "phi-3", True), ("qwen3_training", "qwen3", "qwen2", True)])
def test_trl_training_templates_masks_pass(trl_template, ours, tokenizer, conventional, get_tokenizer):
    """What ``assistant_only_loss`` trains with TRL's training templates (transformers' assistant mask from their
    ``{% generation %}`` blocks) has no error; the documented extras are L014, as the gate's M023."""
    trl = pytest.importorskip("trl")
    from transformers import AutoTokenizer

    from tmplcheck.templates import load_template
    from tmplcheck.validator.tokenized_audit import audit_rows, build_structure

    tok = get_tokenizer(tokenizer)
    hf = AutoTokenizer.from_pretrained(str(tok.hf_dir))
    hf.chat_template = (Path(trl.__file__).parent / "chat_templates" / f"{trl_template}.jinja").read_text()
    msgs = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
    out = hf.apply_chat_template(msgs, return_dict=True, return_assistant_tokens_mask=True)
    fs, _ = audit_rows([(0, None, {"input_ids": list(out["input_ids"]),
                                   "assistant_masks": list(out["assistant_masks"])})],
                       build_structure(load_template(ours), tok))
    assert [f.code for f in fs] == (["L014"] if conventional else [])
