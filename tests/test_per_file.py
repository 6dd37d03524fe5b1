"""Per-file findings: a code that describes the template/tokenizer pair (``Rule.per_file``: X001, K005...) is
reported once per file with the number of rows it applies to and the first line numbers, by every reporter;
select/ignore and the exit status treat it as before, and ``rows_with_errors`` still counts every row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tmplcheck.cli import cli
from tmplcheck.validator.codes import RULES

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"



@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """1,200 different rows: more than two chunks of 512, so the rows are checked in the process pool."""
    p = tmp_path_factory.mktemp("rows") / "rows.jsonl"
    p.write_text("".join(json.dumps({"conversations": [{"from": "human", "value": f"Question {i}?"},
                                                       {"from": "gpt", "value": f"Answer {i}."}]}) + "\n"
                         for i in range(1200)), encoding="utf-8")
    return p


def check(*args) -> tuple[int, str]:
    r = CliRunner().invoke(cli, ["check", *map(str, args)])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.output


def test_per_file_codes_are_marked_in_the_table():
    per_file = {c for c, r in RULES.items() if r.per_file}
    assert {"X001", "X006", "X007", "K005", "T007"} <= per_file
    assert not per_file & {"D013", "K004", "K006", "X003", "X011", "M004"}   # about a row: stay per row
    assert "Reported once per file" in RULES["K005"].render()


def test_once_per_file_with_rows_and_lines_and_the_same_verdict(data, base_tok):
    status, out = check(data, "-t", "llama-3", "-k", base_tok, "--format", "json", "--jobs", "2")
    assert status == 1
    doc = json.loads(out)
    s = doc["summary"]
    by = {}
    for f in doc["findings"]:
        by.setdefault(f["code"], []).append(f)
    assert sorted(by) == ["K005", "X001"] and all(len(v) == 1 for v in by.values())
    k5 = by["K005"][0]
    assert k5["severity"] == "error" and k5["line"] == 1 and k5["pointer"] == "/conversations/1/value"
    assert k5["data"]["rows"] == 1200 and k5["data"]["lines"] == [1, 2, 3, 4, 5]
    assert "[per file: 1200 rows, lines 1, 2, 3, 4, 5, …]" in k5["message"]
    assert by["X001"][0]["data"]["rows"] == 1200 and by["X001"][0]["severity"] == "info"
    assert s["errors"] == 1 and s["infos"] == 1 and s["by_code"] == {"K005": 1, "X001": 1}
    assert s["per_file_rows"] == {"K005": 1200, "X001": 1200}
    assert s["rows_with_errors"] == 1200 and s["passed"] is False


def test_select_ignore_and_exit_as_before(data, base_tok):
    status, out = check(data, "-t", "llama-3", "-k", base_tok, "--format", "json", "--ignore", "K005")
    doc = json.loads(out)
    assert status == 0 and [f["code"] for f in doc["findings"]] == ["X001"]
    assert doc["summary"]["rows_with_errors"] == 0
    status, out = check(data, "-t", "llama-3", "-k", base_tok, "--format", "json", "--select", "X")
    assert status == 0 and [f["code"] for f in json.loads(out)["findings"]] == ["X001"]
    status, out = check(data, "-t", "llama-3", "-k", base_tok, "--format", "json", "--exit-zero")
    assert status == 0 and json.loads(out)["summary"]["errors"] == 1


@pytest.mark.parametrize("fmt", ["text", "jsonl", "junit", "sarif", "github"])
def test_every_reporter_shows_it_once(data, base_tok, fmt):
    status, out = check(data, "-t", "llama-3", "-k", base_tok, "--format", fmt)
    assert status == 1
    assert out.count("K005") >= 1
    if fmt == "text":
        assert out.count("assistant message 1 ends with") == 1 and "once, 1200 rows" in out
    elif fmt == "jsonl":
        rows = [json.loads(x) for x in out.splitlines()]
        assert sorted(r["code"] for r in rows) == ["K005", "X001"] and all(r["data"]["rows"] == 1200 for r in rows)
    elif fmt == "junit":
        assert out.count("<testcase") == 2 and out.count("<failure") == 1
    elif fmt == "sarif":
        res = json.loads(out)["runs"][0]["results"]
        assert sorted(r["ruleId"] for r in res) == ["K005", "X001"]
        assert all(r["properties"]["rows"] == 1200 and r["properties"]["lines"] == [1, 2, 3, 4, 5] for r in res)
    else:
        assert sorted(x.split(" ", 1)[0] for x in out.splitlines()) == ["::error", "::notice"]


def test_for_train_makes_k005_an_info(data, base_tok):
    status, out = check(data, "-t", "llama-3", "-k", base_tok, "--format", "json", "--for-train")
    doc = json.loads(out)
    assert status == 0 and doc["summary"]["passed"]
    [k5] = [f for f in doc["findings"] if f["code"] == "K005"]
    assert k5["severity"] == "info" and "`tmplcheck train` writes every end-of-turn id" in k5["message"]
    # other errors stay errors: --for-train only changes K005
    status, _ = check(FIX / "tokens" / "eot_missing.jsonl", "-t", FIX / "templates" / "broken_no_eot.jinja",
                      "-k", "llama-3", "--for-train", "--format", "json")
    assert status == 1
