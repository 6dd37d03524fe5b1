"""The CI gate's command-line contract: exit codes, formats, output file, config, select/ignore."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures" / "dataset"
EXAMPLE = ROOT / "examples" / "tweets.jsonl"


def run(*args, cwd=None, stdin=None):
    return subprocess.run([sys.executable, "-m", "tmplcheck", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, input=stdin)


def test_clean_exit_0():
    r = run(FIX / "clean.jsonl")
    assert r.returncode == 0, r.stderr
    assert "PASS" in r.stdout


def test_findings_exit_1_with_location():
    r = run(FIX / "empty_content.jsonl")
    assert r.returncode == 1
    assert "empty_content.jsonl:2: D013 [error]" in r.stdout
    assert "/conversations/1/value" in r.stdout


def test_exit_zero():
    assert run(FIX / "empty_content.jsonl", "--exit-zero").returncode == 0


def test_warnings_alone_pass():
    r = run(FIX / "edge_whitespace.jsonl")
    assert r.returncode == 0 and "D014" in r.stdout


def test_usage_errors_exit_2():
    assert run("no/such/file.jsonl").returncode == 2
    assert run(FIX / "clean.jsonl", "--format", "yaml").returncode == 2
    r = run(FIX / "clean.jsonl", "--select", "Z999")
    assert r.returncode == 2 and "matches no finding code" in r.stderr


def test_json_format_contract():
    r = run(FIX / "all_codes.jsonl", "--format", "json", "--max-line-bytes", "2048")
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert set(doc) == {"summary", "findings"}
    assert doc["summary"]["errors"] == sum(1 for f in doc["findings"] if f["severity"] == "error")
    for f in doc["findings"]:
        assert {"code", "severity", "message", "path", "line", "pointer"} <= set(f)
    assert {f["code"] for f in doc["findings"]} >= {"D001", "D013", "D027"}


def test_jsonl_format():
    r = run(FIX / "multiple_system.jsonl", "--format", "jsonl")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["code"], x["line"]) for x in rows] == [("D015", 2), ("D016", 2)]


def test_junit_is_valid_xml_with_failures():
    r = run(FIX / "all_codes.jsonl", "--format", "junit", "--max-line-bytes", "2048")
    root = ET.fromstring(r.stdout)
    assert root.tag == "testsuites"
    cases = root.findall(".//testcase")
    failures = root.findall(".//failure")
    assert len(cases) == 31
    assert len(failures) == int(root.get("failures")) == 20
    assert any("D026" in f.get("message") for f in failures)
    # control characters from the data never break the XML
    assert all(ord(c) >= 32 or c in "\t\n\r" for c in r.stdout)


def test_junit_clean_has_one_passing_case():
    root = ET.fromstring(run(FIX / "clean.jsonl", "--format", "junit").stdout)
    assert len(root.findall(".//testcase")) == 1 and not root.findall(".//failure")


def test_sarif_required_fields():
    r = run(FIX / "all_codes.jsonl", "--format", "sarif", "--max-line-bytes", "2048")
    doc = json.loads(r.stdout)
    assert doc["version"] == "2.1.0" and "$schema" in doc
    run0 = doc["runs"][0]
    rules = run0["tool"]["driver"]["rules"]
    ids = [x["id"] for x in rules]
    assert ids == sorted(set(f["ruleId"] for f in run0["results"]))
    for res in run0["results"]:
        assert res["level"] in ("error", "warning", "note")
        assert rules[res["ruleIndex"]]["id"] == res["ruleId"]
        loc = res["locations"][0]["physicalLocation"]
        assert loc["artifactLocation"]["uri"].endswith("all_codes.jsonl")
        assert loc["region"]["startLine"] >= 1
        assert res["message"]["text"]


def test_github_annotations():
    r = run(FIX / "empty_content.jsonl", "--format", "github")
    assert r.stdout.startswith("::error file=")
    assert ",line=2," in r.stdout and "title=D013 empty-content" in r.stdout


def test_output_file_and_max_findings(tmp_path):
    out = tmp_path / "report.json"
    r = run(FIX / "all_codes.jsonl", "--format", "json", "--output", out, "--max-findings", "3",
            "--max-line-bytes", "2048")
    assert r.returncode == 1 and r.stdout == ""
    doc = json.loads(out.read_text())
    assert len(doc["findings"]) == 3 and doc["summary"]["errors"] == 20  # trimmed output, everything counted


def test_text_group_by_code():
    r = run(FIX / "all_codes.jsonl", "--group", "code", "--max-line-bytes", "2048")
    assert "D015 system-not-first" in r.stdout
    assert "FAIL" in r.stdout


def test_config_from_pyproject_flags_win(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.tmplcheck]\nignore = ["D013"]\nformat = "json"\n')
    data = tmp_path / "d.jsonl"
    data.write_bytes((FIX / "empty_content.jsonl").read_bytes())
    r = run(data, cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout)["findings"] == []
    r = run(data, "--ignore", "D014", "--format", "text", cwd=tmp_path)
    assert r.returncode == 1 and "D013" in r.stdout


def test_tmplcheck_toml_and_bad_config(tmp_path):
    (tmp_path / "tmplcheck.toml").write_text("exit-zero = true\n")
    data = tmp_path / "d.jsonl"
    data.write_bytes((FIX / "empty_content.jsonl").read_bytes())
    assert run(data, cwd=tmp_path).returncode == 0
    (tmp_path / "tmplcheck.toml").write_text("colour = 'red'\n")
    r = run(data, cwd=tmp_path)
    assert r.returncode == 2 and "unknown setting 'colour'" in r.stderr


def test_several_files():
    r = run(FIX / "clean.jsonl", FIX / "empty_content.jsonl", "--format", "json")
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and len(doc["summary"]["files"]) == 2


def test_rule_command():
    r = run("rule", "D013")
    assert r.returncode == 0 and "empty-content" in r.stdout and "Fix:" in r.stdout
    assert run("rule", "empty-content").stdout == r.stdout
    assert run("rule", "Q1").returncode == 2
    listing = run("rule").stdout.splitlines()
    assert any(line.startswith("D001") for line in listing)


def test_version_and_help():
    assert "tmplcheck" in run("--version").stdout
    assert "check" in run("--help").stdout


def test_add_special_tokens_models_the_naive_pipeline():
    """Meta's Llama 3 tokenizer adds BOS and the llama-3 template writes it: fine the way apply_chat_template
    tokenizes (auto), a double BOS for a pipeline that runs tokenizer(text) on the render."""
    args = (EXAMPLE, "--template", "llama-3", "--tokenizer", "llama-3", "--format", "json")
    auto = run(*args)
    naive = run(*args, "--add-special-tokens", "yes")
    assert auto.returncode == 0, auto.stdout + auto.stderr
    assert naive.returncode == 1
    # K002 describes the pipeline, not a row: once per file, with the rows it applies to
    [k2] = [f for f in json.loads(naive.stdout)["findings"] if f["code"] == "K002"]
    assert (k2["line"], k2["data"]["rows"], k2["data"]["lines"]) == (1, 2, [1, 2])


@pytest.mark.parametrize("cmd", [["check"], ["show", "--line", "1"], ["scan", "--template", "llama-3"]])
def test_bad_tokenizer_spec_is_a_usage_error(cmd):
    data = FIX / "clean.jsonl" if cmd[0] != "scan" else ROOT / "fixtures" / "generations" / "clean.jsonl"
    r = run(cmd[0], data, *cmd[1:], "--tokenizer", "no-such-tokenizer")
    assert r.returncode == 2
    assert "--tokenizer" in r.stderr and "no-such-tokenizer" in r.stderr and "internal error" not in r.stderr


def test_bad_template_spec_is_a_usage_error():
    r = run(FIX / "clean.jsonl", "--template", "no-such-template")
    assert r.returncode == 2 and "--template" in r.stderr and "internal error" not in r.stderr
