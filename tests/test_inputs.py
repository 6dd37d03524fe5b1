"""Inputs beyond JSONL (validator/sources.py): parquet rows located by row group, Arrow files and streams,
save_to_disk folders, dataset ids from the local HF cache, bad inputs; Alpaca rows; per-message training flags
(validator/training_flags.py) wherever a mask is made or expected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import tmplcheck
from tmplcheck.cli import cli
from tmplcheck.validator.sources import SourceError, open_source

FIX = Path(__file__).resolve().parent.parent / "fixtures"


def run(*args):
    return CliRunner().invoke(cli, list(args))


def write_parquet(path: Path, rows: list[dict], row_group_size: int = 2) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_batches([pa.RecordBatch.from_struct_array(pa.array(rows))]), path,
                   row_group_size=row_group_size)
    return path


def chat(q: str, a: str, **flags) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a, **flags}]}


ROWS = [chat("One?", "1"), chat("Two?", "2"), chat("Three?", "3"), chat("Four? ", "4"), chat("Five?", "5")]


# ------------------------------------------------------------------------------------------------- locations
def test_parquet_findings_name_row_and_row_group(tmp_path):
    p = write_parquet(tmp_path / "data.parquet", ROWS)
    r = run("check", str(p))
    assert r.exit_code == 0, r.output
    assert f"{p}:row 3 (row group 1): D014" in r.output      # the fourth row, in the second group of two
    r = run("check", str(p), "--format", "json")
    f = json.loads(r.output)["findings"][0]
    assert (f["code"], f["line"], f["data"]["row"], f["data"]["row_group"]) == ("D014", 4, 3, 1)
    assert json.loads(r.output)["summary"]["source"]["kind"] == "parquet"
    sarif = json.loads(run("check", str(p), "--format", "sarif").output)
    props = sarif["runs"][0]["results"][0]["properties"]
    assert props["row"] == 3 and props["row_group"] == 1


def test_a_folder_of_parquet_files_names_the_file_and_the_global_row(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    write_parquet(d / "part-0.parquet", ROWS[:2])
    write_parquet(d / "part-1.parquet", ROWS[2:])
    res = tmplcheck.check(str(d))
    (f,) = res.findings
    assert f.code == "D014" and f.data["row"] == 3 and f.data["file"].endswith("part-1.parquet")
    assert f.data["row_group"] == 0


def test_arrow_stream_file_and_save_to_disk(tmp_path):
    import datasets
    import pyarrow as pa

    table = pa.Table.from_pylist(ROWS)
    with pa.ipc.new_stream(str(tmp_path / "s.arrow"), table.schema) as w:   # the format datasets writes
        w.write_table(table, max_chunksize=2)
    with pa.ipc.new_file(str(tmp_path / "f.arrow"), table.schema) as w:
        w.write_table(table)
    for p in ("s.arrow", "f.arrow"):
        src = open_source(str(tmp_path / p))
        assert [r.data for r in src.records()] == ROWS
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert [f.code for f in tmplcheck.check(str(tmp_path / "dd" / "train")).findings] == ["D014"]
    r = run("check", str(tmp_path / "dd"))
    assert r.exit_code == 2 and "DatasetDict folder" in r.output and "dd/train" in r.output


# ------------------------------------------------------------------------------------------------- hub cache
def _cache_dataset(cache: Path, repo: str, files: dict[str, list[dict]]) -> None:
    """A dataset repo laid out as huggingface_hub caches it: refs/main → snapshots/<commit>/<files>."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"datasets--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    for name, rows in files.items():
        p = root / "snapshots" / commit / name
        p.parent.mkdir(parents=True, exist_ok=True)
        write_parquet(p, rows)


def test_a_dataset_id_is_read_from_the_local_cache_offline(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    _cache_dataset(cache, "acme/chats", {"data/train-00000-of-00001.parquet": ROWS,
                                         "data/test-00000-of-00001.parquet": ROWS[:1]})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = tmplcheck.check("acme/chats")
    assert res.summary["rows"] == 5 and [f.code for f in res.findings] == ["D014"]
    assert res.findings[0].data["row"] == 3
    assert tmplcheck.check("acme/chats", split="test").summary["rows"] == 1
    r = run("check", "acme/chats")
    assert r.exit_code == 0 and "row 3" in r.output


def test_a_dataset_id_not_in_the_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(SourceError) as e:
        tmplcheck.check("acme/not-here")
    assert "'acme/not-here'" in str(e.value) and str(tmp_path / "empty") in str(e.value)
    r = run("check", "acme/not-here")
    assert r.exit_code == 2 and "not in the local Hugging Face cache" in r.output


# ------------------------------------------------------------------------------------------------- bad inputs
def test_corrupt_parquet_and_missing_columns_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    r = run("check", str(bad))
    assert r.exit_code == 2 and "not a readable parquet file" in r.output and "bad.parquet" in r.output
    other = write_parquet(tmp_path / "other.parquet", [{"text": "a", "label": 1}])
    r = run("check", str(other))
    assert r.exit_code == 2 and "no 'conversations' or 'messages' or 'instruction' column" in r.output
    assert "text, label" in r.output
    import pandas as pd

    with pytest.raises(SourceError, match="no 'messages' column"):
        tmplcheck.check(pd.DataFrame({"text": ["a"]}), input_format="openai")
    bad_arrow = tmp_path / "bad.arrow"
    bad_arrow.write_bytes(b"nope")
    with pytest.raises(SourceError, match="not a readable Arrow"):
        tmplcheck.check(str(bad_arrow))


def test_null_struct_fields_are_not_findings(tmp_path):
    """A struct column has every key any row has: a message without ``weight`` reads ``weight: null``. Rows whose
    messages differ in keys give the same findings from parquet as from JSONL (here none)."""
    rows = [chat("Q?", "A.", weight=1), chat("R?", "B."),
            {"messages": [{"role": "user", "content": "S?"},
                          {"role": "assistant", "content": "", "tool_calls": [
                              {"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]},
                          {"role": "tool", "content": "ok"}, {"role": "assistant", "content": "Done."}]}]
    p = write_parquet(tmp_path / "n.parquet", rows)
    assert [r.data for r in open_source(str(p)).records()] == rows
    j = tmp_path / "n.jsonl"
    j.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert tmplcheck.check(str(p)).by_code() == tmplcheck.check(str(j)).by_code()


# ------------------------------------------------------------------------------------------------- Alpaca
ALPACA = [{"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
          {"instruction": "Name a colour.", "input": "", "output": "Blue.", "system": "Be brief."},
          {"instruction": "Say hi.", "output": "Hi. "}]


def test_alpaca_rows_are_user_and_assistant_turns(tmp_path):
    from tmplcheck.validator.ingest import parse_row

    conv, found = parse_row(ALPACA[0], path="a", line=1)
    assert found == [] and conv.format == "alpaca"
    assert [(m.role, m.content, m.pointer) for m in conv.messages] == [
        ("user", "Translate to French.\n\nGood morning", "/instruction"), ("assistant", "Bonjour", "/output")]
    conv, _ = parse_row(ALPACA[1], path="a", line=2)
    assert [(m.role, m.content) for m in conv.messages] == [
        ("system", "Be brief."), ("user", "Name a colour."), ("assistant", "Blue.")]
    j = tmp_path / "a.jsonl"
    j.write_text("".join(json.dumps(r) + "\n" for r in ALPACA))
    p = write_parquet(tmp_path / "a.parquet", ALPACA)
    for data in (str(j), str(p), ALPACA):
        res = tmplcheck.check(data, template="llama-3", select=["D", "T"])
        assert [(f.code, f.line, f.pointer) for f in res.findings] == [("D014", 3, "/output")]


def test_alpaca_bad_fields():
    from tmplcheck.validator.ingest import parse_row

    _, found = parse_row({"instruction": 5, "output": "x"}, path="a", line=1)
    assert [(f.code, f.pointer) for f in found] == [("D011", "/instruction")]
    _, found = parse_row({"instruction": "x"}, path="a", line=1, forced="alpaca")
    assert [f.code for f in found] == ["D007"] and "'output'" in found[0].message
    _, found = parse_row({"text": "x"}, path="a", line=1)
    assert found[0].code == "D007" and "instruction" in found[0].message


# ------------------------------------------------------------------------------------------------- training flags
def test_trained_turns():
    from tmplcheck.validator.training_flags import trained_turns

    def msgs(*flags):
        out = [{"role": "system", "content": "s"}]
        for f in flags:
            out += [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", **f}]
        return out

    assert trained_turns(msgs({}, {})) == {2, 4}
    assert trained_turns(msgs({}, {}), "last-assistant") == {4}
    assert trained_turns(msgs({"weight": 0}, {"weight": 1})) == {4}
    assert trained_turns(msgs({"train": False}, {})) == {4}
    assert trained_turns(msgs({"trainable": False}, {})) == {4}
    assert trained_turns(msgs({"weight": 1}, {}), "last-assistant") == {2, 4}   # a flag wins over train_on
    assert trained_turns(msgs({"weight": None}, {})) == {2, 4}                  # null = no flag (parquet)
    assert trained_turns(msgs({"weight": 0.5}, {})) == {2, 4}                   # bad value = no flag (D052)
    assert trained_turns(msgs({"weight": 0}, {"train": False})) == frozenset()
    with pytest.raises(ValueError, match="train_on"):
        trained_turns(msgs({}), "every")


@pytest.mark.parametrize("code", ["D051", "D052", "D053"])
def test_flag_codes_fixture_and_clean(code):
    from tmplcheck.validator.codes import RULES

    r = run("check", str(FIX / RULES[code].fixture), "--select", "D05", "--format", "json")
    assert r.exit_code == 1, r.output
    assert {f["code"] for f in json.loads(r.output)["findings"]} == {code}
    r = run("check", str(FIX / "dataset" / "training_flags_clean.jsonl"), "--select", "D05", "--format", "json")
    assert r.exit_code == 0 and json.loads(r.output)["findings"] == []


def test_last_assistant_can_leave_a_row_with_nothing_only_by_flags(tmp_path):
    p = tmp_path / "f.jsonl"
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                          {"role": "user", "content": "r"}, {"role": "assistant", "content": "b", "weight": 0}]}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run("check", str(p), "--select", "D05").exit_code == 0     # all-assistant: message 1 is trained
    r = run("check", str(p), "--select", "D05", "--train-on", "last-assistant")
    assert r.exit_code == 1 and "D053" in r.output
    (tmp_path / "tmplcheck.toml").write_text('train_on = "last-assistant"\n')
    assert run("check", str(p), "--select", "D05").exit_code == 1     # the settings file says it too
    (tmp_path / "tmplcheck.toml").write_text('train_on = "everything"\n')
    r = run("check", str(p))
    assert r.exit_code == 2 and "train_on must be" in r.output


def test_masks_follow_the_flags(llama3_tokenizer):
    """The gate's expected mask, the labels (show, train) and --train-on agree: no M finding on flagged rows, and
    exactly the flagged-in turns carry labels."""
    from tmplcheck.templates import load_template
    from tmplcheck.validator.tokens import IGNORE_INDEX, encode_conversation

    clean = FIX / "dataset" / "training_flags_clean.jsonl"
    for extra in ((), ("--train-on", "last-assistant")):
        r = run("check", str(clean), "-t", "llama-3", "-k", "llama-3", "--select", "M,K,D", "--format", "json",
                *extra)
        assert r.exit_code == 0, r.output
        assert json.loads(r.output)["findings"] == [], r.output
    tmpl = load_template("llama-3")
    msgs = json.loads(clean.read_text().splitlines()[0])["messages"]     # weight 0 then weight 1
    enc = encode_conversation(tmpl, llama3_tokenizer, msgs)
    trained = "".join(enc.text[s:e] for (s, e), lab in zip(enc.offsets, enc.labels) if lab != IGNORE_INDEX)
    assert trained == "No, it is 4.<|eot_id|>"
    plain = [{k: v for k, v in m.items() if k != "weight"} for m in msgs]
    enc = encode_conversation(tmpl, llama3_tokenizer, plain, train_on="last-assistant")
    trained = "".join(enc.text[s:e] for (s, e), lab in zip(enc.offsets, enc.labels) if lab != IGNORE_INDEX)
    assert trained == "No, it is 4.<|eot_id|>"
    enc = encode_conversation(tmpl, llama3_tokenizer, plain)
    assert sum(lab != IGNORE_INDEX for lab in enc.labels) > len(llama3_tokenizer.encode("No, it is 4.").ids) + 1


def test_expected_mask_leaves_out_untrained_turns():
    from tmplcheck.validator.checks.masks import expected_mask
    from tmplcheck.validator.checks.tokens import Turn

    text = "U: q A: a A: b"
    offsets = [(0, 2), (3, 4), (5, 7), (8, 9), (10, 12), (13, 14)]
    ids = list(range(6))
    turns = [Turn(0, "user", 3, 4), Turn(1, "assistant", 8, 9), Turn(2, "assistant", 13, 14)]
    assert expected_mask(text, ids, offsets, turns, {})[0] == [0, 0, 0, 1, 0, 1]
    assert expected_mask(text, ids, offsets, turns, {}, trained=frozenset({2}))[0] == [0, 0, 0, 0, 0, 1]


def test_show_and_train_labels_take_train_on(tmp_path, llama3_tokenizer):
    p = tmp_path / "two.jsonl"
    p.write_text(json.dumps({"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"},
                                          {"role": "user", "content": "Sure?"},
                                          {"role": "assistant", "content": "4"}]}) + "\n")
    r = run("show", str(p), "--line", "1", "-t", "llama-3", "-k", "llama-3", "--format", "json",
            "--train-on", "last-assistant")
    assert r.exit_code == 0, r.output
    t = json.loads(r.output)
    assert "".join(x["string"] for x in t["tokens"] if x["trained"]) == "4<|eot_id|>" and t["findings"] == []
    from tmplcheck.templates import load_template
    from tmplcheck.trainer import data as D
    from tmplcheck.validator.ingest import read_rows

    convs = [row.conversation for row in read_rows(p)]
    (ex,) = D.encode(convs, load_template("llama-3"), llama3_tokenizer, max_length=None, train_on="last-assistant")
    assert llama3_tokenizer.decode([i for i, lab in zip(ex.ids, ex.labels) if lab != -100]) == "4<|eot_id|>"


def test_show_a_parquet_row_by_index(tmp_path):
    rows = [chat("2+2?", "5", weight=0), chat("3+3?", "6")]
    p = write_parquet(tmp_path / "s.parquet", rows, row_group_size=1)
    r = run("show", str(p), "--row", "1", "-t", "llama-3", "-k", "llama-3", "--format", "json")
    assert r.exit_code == 0, r.output
    t = json.loads(r.output)
    assert t["row"] == 1 and t["where"] == f"{p}:row 1 (row group 1)"
    assert "".join(x["string"] for x in t["tokens"] if x["trained"]) == "6<|eot_id|>"
    r = run("show", str(p), "--row", "0", "-t", "llama-3", "-k", "llama-3", "--format", "json")
    assert json.loads(r.output)["findings"][0]["code"] == "M004"   # weight 0: nothing trained (D053 in check)
    assert run("show", str(p), "--row", "5", "-t", "llama-3", "-k", "llama-3").exit_code == 2
    assert run("show", str(p), "-t", "llama-3", "-k", "llama-3").exit_code == 2


def test_last_assistant_on_plain_rows_through_the_gate():
    """Plain rows (no flags): under --train-on last-assistant the earlier answers are expected and labelled
    untrained, with no M finding (the regular path hands such rows to the full checks)."""
    turns = [("2+2?", "5"), ("Sure?", "4")]
    rows = [{"messages": [m for q, a in turns for m in ({"role": "user", "content": f"{q} {i}"},
                                                          {"role": "assistant", "content": f"{a}{i}"})]}
            for i in range(3)]
    every = tmplcheck.check(rows, template="llama-3", tokenizer="llama-3", select=["K", "M", "D"])
    last = tmplcheck.check(rows, template="llama-3", tokenizer="llama-3", select=["K", "M", "D"],
                           train_on="last-assistant")
    assert every.passed and last.passed and every.findings == [] and last.findings == []
    assert last.summary["tokens"]["trained_tokens"] * 2 == every.summary["tokens"]["trained_tokens"]


#: JSONL's own checks: the bytes of a line (a typed row has none)
BYTE_CODES = {"D001", "D002", "D003", "D004", "D005", "D022", "D028", "D060", "D061", "D062"}


def test_every_dataset_fixture_gives_its_findings_from_parquet(tmp_path):
    """Each D fixture that Arrow can hold as one table (a column of one type), written to parquet, gives the
    JSONL's findings (code, row, pointer) but the byte-level ones."""
    import pyarrow as pa

    compared = 0
    for p in sorted((FIX / "dataset").glob("*.jsonl")):
        try:
            rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
            arrow_table = pa.Table.from_batches([pa.RecordBatch.from_struct_array(pa.array(rows))])
        except (ValueError, TypeError, pa.ArrowException):
            continue   # not JSON, or values of several types in one column: no parquet file holds these rows
        import pyarrow.parquet as pq

        pq.write_table(arrow_table, tmp_path / "x.parquet")
        want = {(f.code, f.line, f.pointer) for f in tmplcheck.check(str(p), select=["D"]).findings
                if f.code not in BYTE_CODES}
        got = {(f.code, f.line, f.pointer) for f in tmplcheck.check(str(tmp_path / "x.parquet"),
                                                                   select=["D"]).findings}
        assert got == want, p.name
        compared += 1
    assert compared >= 30


def test_a_folder_with_splits_reads_one(tmp_path):
    (tmp_path / "data").mkdir()
    write_parquet(tmp_path / "data" / "train-00000-of-00001.parquet", ROWS)
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", ROWS[:2])
    assert tmplcheck.check(str(tmp_path)).summary["rows"] == 5
    assert tmplcheck.check(str(tmp_path), split="test").summary["rows"] == 2
    with pytest.raises(SourceError, match="no 'validation' split"):
        tmplcheck.check(str(tmp_path), split="validation")
