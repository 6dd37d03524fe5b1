"""``tmplcheck scan`` end to end through the real entry point: exit codes, formats, thresholds, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GEN = ROOT / "fixtures" / "generations"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tmplcheck", *args], capture_output=True, text=True, cwd=ROOT)


def test_clean_exits_0():
    p = run("scan", str(GEN / "clean.jsonl"), "--template", "llama-3")
    assert p.returncode == 0, p.stderr
    assert "PASS" in p.stdout and "no artifacts" in p.stdout


def test_artifacts_exit_1_with_located_json():
    p = run("scan", str(GEN / "continuation.jsonl"), "--template", "llama-3", "--format", "json")
    assert p.returncode == 1, p.stderr
    doc = json.loads(p.stdout)
    a005 = [f for f in doc["findings"] if f["code"] == "A005"]
    assert [(f["line"], f["pointer"], f["name"]) for f in a005] == [
        (1, "/output", "conversation-continuation"), (3, "/output", "conversation-continuation")]
    art = doc["summary"]["artifacts"]
    assert art["rates"]["A005"] == pytest.approx(2 / 3) and art["verdict"] == "fail"
    assert "A005" in art["over_threshold"]


def test_threshold_and_warn_only():
    f = str(GEN / "trailing_role_word.jsonl")
    assert run("scan", f, "-t", "llama-3", "--threshold", "A001=0.5").returncode == 0
    assert run("scan", f, "-t", "llama-3", "--threshold", "A001=40%").returncode == 1
    p = run("scan", f, "-t", "llama-3", "--warn-only", "--format", "json")
    assert p.returncode == 0
    assert {x["severity"] for x in json.loads(p.stdout)["findings"]} == {"warning"}


def test_usage_errors_exit_2():
    assert run("scan", str(GEN / "clean.jsonl"), "-t", "llama-3", "--threshold", "A001").returncode == 2
    assert run("scan", str(GEN / "clean.jsonl"), "-t", "llama-3", "--threshold", "Q1=0.1").returncode == 2
    assert run("scan", str(GEN / "nope.jsonl"), "-t", "llama-3").returncode == 2
    assert run("scan", str(GEN / "clean.jsonl"), "-t", "no-such-template-xyz").returncode == 2


def test_invalid_rows_exit_1_never_crash():
    p = run("scan", str(GEN / "invalid_rows.jsonl"), "-t", "llama-3", "--format", "jsonl")
    assert p.returncode == 1, p.stderr
    codes = [json.loads(x)["code"] for x in p.stdout.splitlines()]
    assert codes.count("A010") == 7 and "D001" in codes


def test_other_formats_parse():
    f = str(GEN / "repeated_bos.jsonl")
    j = run("scan", f, "-t", "llama-3", "-k", "llama-3", "--format", "junit")
    assert j.returncode == 1
    root = ET.fromstring(j.stdout)
    assert int(root.get("failures")) == 2
    s = run("scan", f, "-t", "llama-3", "--format", "sarif")
    res = json.loads(s.stdout)["runs"][0]["results"]
    assert {r["ruleId"] for r in res} == {"A007"}
    g = run("scan", f, "-t", "llama-3", "--format", "github")
    assert g.stdout.startswith("::error file=") and "A007" in g.stdout
