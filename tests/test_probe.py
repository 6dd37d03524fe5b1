"""The property probe: no counterexample for the correct built-ins, a shrunk one for deliberately broken templates;
the CLI prints each violated property and exits 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tmplcheck.cli import cli
from tmplcheck.templates import load_template
from tmplcheck.validator.probe import run_probe
from tmplcheck.validator.tokenizer import load_tokenizer

BROKEN = Path(__file__).resolve().parent.parent / "fixtures" / "templates"


def probe(template: str, tokenizer: str, examples: int = 40, **kw):
    tok = load_tokenizer(tokenizer)
    return run_probe(load_template(template, tokenizer_config=tok.config), tok, examples=examples, seed=3, **kw)


@pytest.mark.parametrize("template,tokenizer", [("llama-3", "llama-3"), ("llama-3.1", "llama-3"),
                                                ("chatml", "qwen2"), ("qwen2.5", "qwen2")])
def test_correct_builtins_have_no_counterexample(template, tokenizer):
    res = probe(template, tokenizer)
    assert res.violations == [], [v.as_dict() for v in res.violations]
    assert {"deterministic", "content", "mask", "prefix", "round-trip"} <= set(res.passed)


def test_assistant_turn_without_end_of_turn_is_found():
    res = probe(str(BROKEN / "broken_no_eot.jinja"), "llama-3", only=["mask"])
    [v] = res.violations
    assert v.property == "mask" and "K004" in v.message
    # shrunk: the smallest valid conversation, one user turn and one answer
    assert [m["role"] for m in v.example] == ["user", "assistant"]


def test_trimming_template_is_found():
    res = probe(str(BROKEN / "broken_trim.jinja"), "qwen2", only=["content"])
    [v] = res.violations
    assert "trimmed" in v.message
    m = int(v.message.split()[1])
    c = v.example[m]["content"]
    assert c != c.strip()


def test_history_rewriting_template_breaks_prefix_property():
    res = probe(str(BROKEN / "broken_history.jinja"), "llama-2", only=["prefix"], examples=60)
    [v] = res.violations
    assert "history rewritten" in v.message and v.example[0]["role"] == "system"


def test_generation_markers_that_skip_end_of_turn_are_found():
    res = probe(str(BROKEN / "broken_generation_eot.jinja"), "qwen2", only=["mask"])
    [v] = res.violations
    assert "M006" in v.message and "end-of-turn" in v.message


def test_cli_prints_counterexample_and_exits_1():
    r = CliRunner().invoke(cli, ["probe", "--template", str(BROKEN / "broken_no_eot.jinja"), "--tokenizer",
                                 "llama-3", "--examples", "20", "--property", "mask", "--format", "json"])
    assert r.exit_code == 1, r.output
    out = json.loads(r.output)
    assert out["violations"][0]["property"] == "mask" and out["violations"][0]["example"]
    r = CliRunner().invoke(cli, ["probe", "--template", "chatml", "--tokenizer", "qwen2", "--examples", "15"])
    assert r.exit_code == 0, r.output
    assert "ok    mask" in r.output
