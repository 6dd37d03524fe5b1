"""Every K and M code: its fixture triggers it at the right line and pointer through the gate, on real vocabularies
(Llama 3's 128k BPE, Llama 2's SentencePiece, Qwen2's BPE); clean data with the right pair triggers none."""

from __future__ import annotations

import json
from pathlib import Path

import derived_tokenizers
import pytest

from tmplcheck.validator.codes import RULES
from tmplcheck.validator.gate import GateOptions, run_gate
from tmplcheck.validator.stages import StageConfig, build_stages

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures" / "tokens"
BROKEN = ROOT / "fixtures" / "templates"


def km(path: Path, template: str | None, tokenizer: str, max_length: int | None = None, jobs: int = 1,
       add_special_tokens="auto"):
    stages = build_stages(StageConfig(template=template, tokenizer=tokenizer, max_length=max_length,
                                      extra={"jobs": jobs, "add_special_tokens": add_special_tokens}))
    # every row's own finding (per-file codes unfolded): these tests locate each check; tests/test_per_file.py
    # tests the folding the reports use
    res = run_gate(path, GateOptions(stages=stages, fold_per_file=False), display_path=path.name)
    return res, {(f.line, f.code, f.pointer) for f in res.findings if f.code[0] in "KM"}


@pytest.fixture(scope="session")
def llama3_base(tmp_path_factory):
    """A Llama 3 *base* model directory: eos <|end_of_text|>, generation config stops on 128001 only."""
    return derived_tokenizers.llama3_base(tmp_path_factory.mktemp("llama3-base"))


@pytest.fixture(scope="session")
def llama3_no_bos(tmp_path_factory):
    """Llama 3 whose tokenizer.json does not add BOS (as transformers' GGUF conversion writes it) while its config
    says add_bos_token."""
    return derived_tokenizers.llama3_no_bos(tmp_path_factory.mktemp("llama3-nobos"))


# (fixture, template, tokenizer, max_length) -> expected (line, code, pointer) set, exactly (K and M codes only)
CASES = [
    # chatml writes no BOS and the Llama 3 tokenizer adds one when it encodes text: K020 comes with the pair
    ("special_not_single.jsonl", "chatml", "llama-3", None, "K001", {(0, "K001", ""), (1, "K020", ""),
                                                                      (2, "K020", "")}),
    ("eot_missing.jsonl", str(BROKEN / "broken_no_eot.jinja"), "llama-3", None, "K004",
     {(1, "K004", "/conversations/2/value"), (2, "K004", "/conversations/1/value")}),
    ("control_in_content.jsonl", "llama-3", "llama-3", None, "K006", {(2, "K006", "/conversations/0/value")}),
    ("over_max_length.jsonl", "llama-3", "llama-3", 64, "K007",
     {(2, "K007", ""), (2, "K008", "/conversations/1/value")}),
    ("header_merge.jsonl", "chatml", "qwen2", None, "K009", {(2, "K009", "/conversations/1/value")}),
    ("mask_boundary_merge.jsonl", str(BROKEN / "broken_no_space.jinja"), "llama-2", None, "M005",
     {(2, "M005", "/conversations/1/value"), (2, "K009", "/conversations/1/value")}),
    ("prefix_unstable.jsonl", str(BROKEN / "broken_history.jinja"), "llama-2", None, "K011",
     {(2, "K011", "/conversations/1/from")}),
    ("content_changed.jsonl", str(BROKEN / "broken_drop_system.jinja"), "qwen2", None, "K012",
     {(1, "K012", "/conversations/0/value")}),
    ("no_trained_tokens.jsonl", "llama-3", "llama-3", None, "M004", {(2, "M004", "")}),
    # M006 says the markers disagree; each kind comes under the code the labels would get (M001 header marked, M003
    # end-of-turn unmarked), at the role of the turn whose header it is
    ("generation_header_trained.jsonl", str(BROKEN / "broken_generation_header.jinja"), "qwen2", None, "M006",
     {(1, "M006", "/conversations/2/value"), (2, "M006", "/conversations/1/value"),
      (1, "M001", "/conversations/2/from"), (2, "M001", "/conversations/1/from")}),
    ("generation_eot_masked.jsonl", str(BROKEN / "broken_generation_eot.jinja"), "qwen2", None, "M006",
     {(1, "M006", "/conversations/2/value"), (2, "M006", "/conversations/1/value"),
      (1, "M003", "/conversations/2/from"), (2, "M003", "/conversations/1/from")}),
]


@pytest.mark.parametrize("fixture,template,tokenizer,max_length,code,expected", CASES,
                         ids=[c[0] for c in CASES])
def test_fixture_triggers_code(fixture, template, tokenizer, max_length, code, expected):
    _res, got = km(FIX / fixture, template, tokenizer, max_length)
    assert got == expected


@pytest.mark.parametrize("template,tokenizer", [("llama-3", "llama-3"), ("chatml", "qwen2"),
                                                ("llama-3.1", "llama-3"), ("mistral-v1", "llama-2")])
def test_clean_counterpart(template, tokenizer):
    res, got = km(FIX / "clean.jsonl", template, tokenizer, max_length=4096)
    assert got == set()
    tok = res.summary["tokens"]
    assert tok["rows_encoded"] == 3 and tok["rows_failed_by_code"] == {}
    assert "every token check passed" in tok["headline"]


def test_eot_not_stop_on_a_base_model_dir(llama3_base):
    _res, got = km(FIX / "eot_not_stop.jsonl", "llama-3", str(llama3_base))
    assert got == {(1, "K005", "/conversations/2/value"), (2, "K005", "/conversations/1/value")}
    # the same rows with the built-in Llama 3 (instruct stop set: 128001, 128008, 128009) are clean
    _res, got = km(FIX / "eot_not_stop.jsonl", "llama-3", "llama-3")
    assert got == set()


def test_double_bos_both_setups(llama3_no_bos):
    """The llama-3 template writes <|begin_of_text|>. Encoding the render with the post-processor on (what
    ``tokenizer(text)`` does) gives two with Meta's tokenizer, one with a tokenizer that does not add BOS; the
    trainer's policy ("auto") gives one with both."""
    fx = FIX / "double_bos.jsonl"
    _res, got = km(fx, "llama-3", "llama-3", add_special_tokens=True)
    assert got == {(1, "K002", ""), (2, "K002", "")}
    _res, got = km(fx, "llama-3", str(llama3_no_bos), add_special_tokens=True)
    assert got == set()
    for spec in ("llama-3", str(llama3_no_bos)):
        _res, got = km(fx, "llama-3", spec)
        assert got == set(), spec


def test_missing_bos(llama3_no_bos):
    tmpl = str(BROKEN / "broken_llama3_no_bos.jinja")
    _res, got = km(FIX / "missing_bos.jsonl", tmpl, str(llama3_no_bos))
    assert got == {(1, "K003", ""), (2, "K003", "")}
    # the real tokenizer adds it to text, but apply_chat_template (and training) encode without it: K020
    _res, got = km(FIX / "missing_bos.jsonl", tmpl, "llama-3")
    assert got == {(1, "K020", ""), (2, "K020", "")}
    _res, got = km(FIX / "missing_bos.jsonl", tmpl, "llama-3", add_special_tokens=True)   # tokenizer(text)
    assert got == set()


def test_every_km_code_has_a_fixture_and_explanation():
    for code, rule in RULES.items():
        if code[0] not in "KM":
            continue
        assert rule.fixture and (ROOT / "fixtures" / rule.fixture).is_file(), code
        for word in ("What", "Why it hurts", "Fix"):
            assert word in rule.explanation, (code, word)


def test_serial_and_parallel_agree_on_fixtures():
    for fixture, template, tokenizer, max_length, _code, _exp in CASES[:4]:
        a, _ = km(FIX / fixture, template, tokenizer, max_length, jobs=1)
        b, _ = km(FIX / fixture, template, tokenizer, max_length, jobs=2)
        assert a.findings == b.findings


@pytest.fixture(scope="session")
def llama2_transformers_conversion(tmp_path_factory):
    """Llama 2's vocabulary as transformers' own GGUF loader converts it (a Metaspace pre-tokenizer that adds no
    space after a special token), next to the GGUF it came from: llama.cpp tokenizes text after <s> differently."""
    from transformers import AutoTokenizer

    from tmplcheck import assets

    gguf = assets.vocab_gguf("llama-spm")
    d = tmp_path_factory.mktemp("llama2-hf-gguf")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok.save_pretrained(str(d))
    (d / "tmplcheck-tokenizer.json").write_text(json.dumps({"source": str(gguf)}))
    return d


def test_llamacpp_token_mismatch(llama2_transformers_conversion):
    _res, got = km(FIX / "llamacpp_mismatch.jsonl", "mistral-v1", str(llama2_transformers_conversion))
    assert {c for _l, c, _p in got} == {"K010"}
    assert {(line, p) for line, c, p in got} == {(1, ""), (2, "")}
    res, _ = km(FIX / "llamacpp_mismatch.jsonl", "mistral-v1", "llama-2")  # tmplcheck's exact conversion
    assert not [f for f in res.findings if f.code == "K010"]
    assert res.summary["tokens"]["llamacpp_rows_compared"] == 2
