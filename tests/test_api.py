"""tmplcheck.check: the same findings as `tmplcheck check` on the same rows, whatever holds them (a JSONL file, a
list of rows, parquet, Arrow, a save_to_disk folder, a datasets Dataset/IterableDataset, a pandas DataFrame),
with a tokenizer given by name or live; the Result object and how it shows."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import tmplcheck
from tmplcheck.cli import cli

FIX = Path(__file__).resolve().parent.parent / "fixtures"
PLANTED = FIX / "inputs" / "planted.jsonl"
#: llama-3 x llama-3 with a max length that cuts the long row: D, K and X findings on planted rows
SETTINGS = {"template": "llama-3", "tokenizer": "llama-3", "max_length": 64}


def key(findings) -> list[tuple]:
    """What must be the same: code, severity, line (row index + 1), pointer, message — a per-file finding's tail
    names its first rows by line in a JSONL file and by index in other sources (``lines 1, 2`` / ``rows 0, 1``)."""

    def msg(m: str) -> str:
        return re.sub(r"\[per file: (\d+ rows?), (?:lines?|rows?) [^\]]*\]", r"[per file: \1]", m)

    return sorted((f.code, f.severity.value, f.line, f.pointer, msg(f.message), tuple(f.data.get("lines", ())))
                  for f in findings)


def rows():
    return [json.loads(line) for line in PLANTED.read_text().splitlines()]


def arrow_table(rs):
    """The rows as one Arrow table, the schema inferred over every row (as a parquet writer of such data does:
    absent keys become nulls of the union struct)."""
    import pyarrow as pa

    return pa.Table.from_batches([pa.RecordBatch.from_struct_array(pa.array(rs))])


@pytest.fixture(scope="module")
def baseline():
    res = tmplcheck.check(str(PLANTED), **SETTINGS)
    codes = set(res.by_code())
    # the planted defects: dataset, flags, tool calls, tokens, cross-renderer
    assert {"D014", "D017", "D019", "D020", "D044", "D051", "D052", "D053", "K007", "K008", "K012",
            "X001", "X020"} <= codes, codes
    return res


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The planted rows in every form tmplcheck reads, made once."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import datasets
    from datasets.table import InMemoryTable

    d = tmp_path_factory.mktemp("stores")
    table = arrow_table(rows())
    pq.write_table(table, d / "planted.parquet", row_group_size=4)
    with pa.ipc.new_file(str(d / "planted.arrow"), table.schema) as w:
        w.write_table(table, max_chunksize=5)
    ds = datasets.Dataset(InMemoryTable(table))
    ds.save_to_disk(str(d / "saved"))
    return {"dir": d, "table": table, "ds": ds}


def test_cli_json_and_api_agree_on_the_jsonl(baseline):
    r = CliRunner().invoke(cli, ["check", str(PLANTED), "-t", "llama-3", "-k", "llama-3", "--max-length", "64",
                                 "--format", "json"])
    assert r.exit_code == 1, r.output
    out = json.loads(r.output)
    cli_key = sorted((f["code"], f["severity"], f["line"], f["pointer"], f["message"]) for f in out["findings"])
    assert cli_key == sorted((f.code, f.severity.value, f.line, f.pointer, f.message) for f in baseline.findings)
    assert out["summary"]["by_code"] == baseline.summary["by_code"]


@pytest.mark.parametrize("form", ["rows", "parquet", "arrow", "save_to_disk", "Dataset", "IterableDataset",
                                  "DataFrame", "DataFrame from parquet"])
def test_every_form_gives_the_jsonls_findings(form, baseline, stores):
    import pandas as pd

    d = stores["dir"]
    data = {
        "rows": lambda: rows(),
        "parquet": lambda: str(d / "planted.parquet"),
        "arrow": lambda: str(d / "planted.arrow"),
        "save_to_disk": lambda: str(d / "saved"),
        "Dataset": lambda: stores["ds"],
        "IterableDataset": lambda: stores["ds"].to_iterable_dataset(),
        "DataFrame": lambda: pd.DataFrame(rows()),
        "DataFrame from parquet": lambda: pd.read_parquet(d / "planted.parquet"),
    }[form]()
    res = tmplcheck.check(data, **SETTINGS)
    assert key(res.findings) == key(baseline.findings)
    folded = [f for f in res.findings if "rows" in f.data]   # per-file findings name their first rows by index
    assert folded
    for f in folded:
        shown = re.search(r", rows? ([\d, ]+)[;…\]]", f.message).group(1)
        assert [int(x) for x in shown.strip(", ").split(", ")] == [x - 1 for x in f.data["lines"]]
    s, b = res.summary, baseline.summary
    for k in ("rows", "rows_with_errors", "errors", "warnings", "infos", "by_code"):
        assert s[k] == b[k], k
    assert s["tokens"]["trained_tokens" if "trained_tokens" in s["tokens"] else "headline"] == \
        b["tokens"]["trained_tokens" if "trained_tokens" in b["tokens"] else "headline"]


def test_a_live_tokenizer_gives_what_its_spec_gives(baseline):
    from transformers import AutoTokenizer

    from tmplcheck import assets

    tok = AutoTokenizer.from_pretrained(str(assets.builtin_tokenizer_dir("llama-3")))
    res = tmplcheck.check(rows(), template="llama-3", tokenizer=tok, max_length=64)
    assert key(res.findings) == key(baseline.findings)
    assert "tmplcheck-tok-" not in res.summary["tokens"]["headline"]   # named as the tokenizer, not its temp dir


def test_a_live_tokenizers_chat_template_is_the_default(tmp_path):
    from transformers import AutoTokenizer

    from tmplcheck import assets

    tok = AutoTokenizer.from_pretrained(str(assets.builtin_tokenizer_dir("llama-3")))
    # a template that drops the system prompt: the token checks use the tokenizer's own template, not a default
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}{% if m['role'] != 'system' %}"
                         "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
                         "{% endif %}{% endfor %}")
    res = tmplcheck.check(rows()[:1], tokenizer=tok)
    assert not res.passed
    assert [(f.code, f.pointer) for f in res.findings] == [("K012", "/messages/0/content")]
    same = tmplcheck.check(rows()[:1], template=tok.chat_template, tokenizer="llama-3", select=["K"])
    assert key(same.findings) == key(res.findings)


def test_result_passed_raise_and_report():
    clean = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}]
    ok = tmplcheck.check(clean)
    assert ok.passed and ok.findings == [] and ok.raise_for_errors() is ok and ok.exit_code == 0
    bad = tmplcheck.check(clean + [{"messages": [{"role": "user", "content": "Hi"}]}], name="chat")
    assert not bad.passed and bad.exit_code == 1
    with pytest.raises(tmplcheck.CheckFailed) as e:
        bad.raise_for_errors()
    assert "chat:row 1: D019" in str(e.value)
    assert json.loads(bad.report("json"))["summary"]["errors"] == bad.errors
    assert "FAIL" in repr(bad)


def test_result_shows_as_an_html_table_and_in_rich(stores):
    res = tmplcheck.check(str(stores["dir"] / "planted.parquet"), select=["D"])
    html = res._repr_html_()
    assert html.startswith('<div class="tmplcheck-result">') and "<table" in html and "FAIL" in html
    assert "planted.parquet:row 6 (row group 1)" in html      # D052, the seventh row, in the second row group
    from rich.console import Console

    con = Console(record=True, width=200, color_system=None)
    con.print(res)
    text = con.export_text()
    assert "planted.parquet:row 6 (row group 1): D052" in text
    assert "FAIL" in text and "D053" in text


def test_unknown_setting_and_bad_data_are_clear():
    with pytest.raises(TypeError, match="unknown settings"):
        tmplcheck.check([], no_such_setting=1)
    from tmplcheck.validator.sources import SourceError

    with pytest.raises(SourceError, match="pass a list of rows"):
        tmplcheck.check({"messages": []})
    with pytest.raises(SourceError, match="no such file"):
        tmplcheck.check("does/not/exist.jsonl")


def test_import_stays_light():
    code = ("import sys, tmplcheck; f = tmplcheck.check;"
            "bad = [m for m in ('torch', 'transformers', 'datasets', 'pandas', 'pyarrow') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
