"""CSV → JSONL: RFC 4180 quoting, embedded newlines, BOM, errors naming the row, atomic write, output passes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tmplcheck.validator.convert import ConvertError, convert_csv
from tmplcheck.validator.gate import run_gate

ROOT = Path(__file__).resolve().parent.parent


def write(p: Path, text: str, bom=False, encoding="utf-8"):
    p.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode(encoding))
    return p


CSV = 'topic,tweet\r\n"Rap music","I LOVE RAP, MUSIC"\r\n"Pokemon, again","LINE ONE\nLINE ""TWO"""\r\n'


@pytest.mark.parametrize("bom", [False, True])
def test_quoting_newlines_bom(tmp_path, bom):
    src = write(tmp_path / "d.csv", CSV, bom=bom)
    out = tmp_path / "d.jsonl"
    res = convert_csv(src, out, user_column="topic", assistant_column="tweet",
                      system="Write a tweet in all capital letters.")
    assert res.rows == 2
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[1]["conversations"][1] == {"from": "human", "value": "Pokemon, again"}
    assert rows[1]["conversations"][2]["value"] == 'LINE ONE\nLINE "TWO"'
    assert rows[0]["conversations"][0]["from"] == "system"
    assert run_gate(out).findings == []  # passes the gate unchanged


def test_openai_format_and_system_column(tmp_path):
    src = write(tmp_path / "d.csv", "sys,q,a\nBe loud.,hi,HELLO\n")
    out = tmp_path / "d.jsonl"
    convert_csv(src, out, user_column="q", assistant_column="a", system_column="sys", fmt="openai")
    assert json.loads(out.read_text()) == {"messages": [{"role": "system", "content": "Be loud."},
                                                        {"role": "user", "content": "hi"},
                                                        {"role": "assistant", "content": "HELLO"}]}


def test_missing_column_names_the_columns(tmp_path):
    src = write(tmp_path / "d.csv", "q,a\nhi,HELLO\n")
    with pytest.raises(ConvertError, match=r"'answer'.*columns: 'q', 'a'"):
        convert_csv(src, tmp_path / "o.jsonl", user_column="q", assistant_column="answer")


def test_ragged_row_names_the_line_and_leaves_no_file(tmp_path):
    src = write(tmp_path / "d.csv", 'q,a\nhi,HELLO\n"multi\nline",X,extra\n')
    out = tmp_path / "o.jsonl"
    with pytest.raises(ConvertError, match=r"d.csv:3: record 3 has 3 fields"):
        convert_csv(src, out, user_column="q", assistant_column="a")
    assert not out.exists() and list(tmp_path.iterdir()) == [src]  # no half file, no temp left


def test_existing_output_untouched_on_error(tmp_path):
    src = write(tmp_path / "d.csv", 'q,a\nhi,"unterminated\n')
    out = tmp_path / "o.jsonl"
    out.write_text("previous\n")
    with pytest.raises(ConvertError):
        convert_csv(src, out, user_column="q", assistant_column="a")
    assert out.read_text() == "previous\n"


def test_wrong_encoding_is_a_clear_error(tmp_path):
    src = write(tmp_path / "d.csv", "q,a\ncafé,OUI\n", encoding="cp1252")
    with pytest.raises(ConvertError, match="pass --encoding"):
        convert_csv(src, tmp_path / "o.jsonl", user_column="q", assistant_column="a")
    convert_csv(src, tmp_path / "o.jsonl", user_column="q", assistant_column="a", encoding="cp1252")
    assert "café" in (tmp_path / "o.jsonl").read_text(encoding="utf-8")


def test_cli(tmp_path):
    src = write(tmp_path / "d.csv", CSV)
    out = tmp_path / "d.jsonl"
    r = subprocess.run([sys.executable, "-m", "tmplcheck", "convert", src, "-o", out, "--user-column", "topic",
                        "--assistant-column", "tweet", "--system", "Shout."], capture_output=True, text=True)
    assert r.returncode == 0 and "wrote 2 rows" in r.stderr
    r = subprocess.run([sys.executable, "-m", "tmplcheck", out], capture_output=True, text=True)
    assert r.returncode == 0
    r = subprocess.run([sys.executable, "-m", "tmplcheck", "convert", src, "-o", out, "--user-column", "nope",
                        "--assistant-column", "tweet"], capture_output=True, text=True)
    assert r.returncode == 2 and "'nope'" in r.stderr
