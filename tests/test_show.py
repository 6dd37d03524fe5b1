"""`tmplcheck show`: one row's tokens with ids, strings, offsets and mask (json), coloured text otherwise."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from tmplcheck.cli import cli

FIX = Path(__file__).resolve().parent.parent / "fixtures"


def show(*args):
    return CliRunner().invoke(cli, ["show", *args])


def test_json_gives_ids_strings_offsets_and_mask():
    r = show(str(FIX / "tokens" / "clean.jsonl"), "--line", "1", "--tokenizer", "llama-3", "--template", "llama-3",
             "--format", "json")
    assert r.exit_code == 0, r.output
    t = json.loads(r.output)
    assert t["ids"][0] == 128000 and t["ids"].count(128000) == 1
    toks = t["tokens"]
    assert [x["id"] for x in toks] == t["ids"]
    trained = "".join(t["text"][x["offset"][0]:x["offset"][1]] for x in toks if x["trained"])
    assert trained == "Paris.<|eot_id|>"          # exactly the answer and its end-of-turn
    assert all(x["special"] for x in toks if x["id"] >= 128000)
    assert {x["part"] for x in toks} >= {"header", "content"}
    assert [u["role"] for u in t["turns"]] == ["system", "user", "assistant"]
    assert t["findings"] == []


def test_json_lists_the_rows_findings():
    r = show(str(FIX / "tokens" / "control_in_content.jsonl"), "--line", "2", "--tokenizer", "llama-3",
             "--template", "llama-3", "--format", "json")
    t = json.loads(r.output)
    assert [f["code"] for f in t["findings"]] == ["K006"]


def test_text_boxes_specials_and_marks_turns():
    r = show(str(FIX / "tokens" / "clean.jsonl"), "--line", "3", "--tokenizer", "qwen2", "--template", "chatml")
    assert r.exit_code == 0, r.output
    assert "⟦<|im_start|>⟧" in r.output and "⟦<|im_end|>⟧" in r.output
    assert r.output.count("· assistant") == 2 and r.output.count("· user") == 2
    assert "trained" in r.output


def test_missing_line_is_a_usage_error():
    r = show(str(FIX / "tokens" / "clean.jsonl"), "--line", "99", "--tokenizer", "llama-3")
    assert r.exit_code != 0 and "no row at line 99" in r.output


def test_a_lone_surrogate_row_is_refused_with_its_place():
    r = show(str(FIX / "dataset" / "lone_surrogate.jsonl"), "--line", "2", "--tokenizer", "llama-3")
    assert r.exit_code == 1
    assert "lone_surrogate.jsonl:2: /conversations/0/value holds a lone surrogate" in r.output and "D027" in r.output


def test_the_gate_reports_a_lone_surrogate_row_and_encodes_the_others():
    """The row cannot be tokenized: D027 says why, the token stage counts it as not encoded instead of stopping."""
    r = CliRunner().invoke(cli, [str(FIX / "dataset" / "lone_surrogate.jsonl"), "--tokenizer", "llama-3",
                                 "--format", "json"])
    assert r.exit_code == 1, r.output
    out = json.loads(r.output)
    assert out["summary"]["by_code"] == {"D027": 1}
    assert out["summary"]["tokens"]["rows_not_encoded"] == 1 and out["summary"]["tokens"]["rows_encoded"] >= 1
