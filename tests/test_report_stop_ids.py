"""`tmplcheck report`'s stop-id check: every saved generation config must stop on every end-of-turn id of the
run's template (what K005 warns about before training, proven after it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tmplcheck.artifacts.html import render_html
from tmplcheck.artifacts.report import check_stop_ids
from tmplcheck.templates import load_template


@pytest.fixture
def run_dir(tmp_path) -> Path:
    from tmplcheck.validator.tokenizer import load_tokenizer

    src = load_tokenizer("llama-3").hf_dir
    (tmp_path / "tokenizer").mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, tmp_path / "tokenizer" / name)
    (tmp_path / "model").mkdir()
    return tmp_path


def gen_config(run_dir: Path, ids, sub: str = "model") -> None:
    (run_dir / sub).mkdir(exist_ok=True)
    (run_dir / sub / "generation_config.json").write_text(json.dumps({"eos_token_id": ids, "pad_token_id": 0}))


def test_passes_when_every_end_of_turn_id_stops(run_dir):
    gen_config(run_dir, [128001, 128008, 128009])
    c = check_stop_ids(run_dir, {"stop_ids": [128001, 128008, 128009]}, load_template("llama-3"))
    assert c["passed"] and c["end_of_turn"]["128009"] == "<|eot_id|>" and c["saved"]["model"] == [128001, 128008,
                                                                                                     128009]
    assert "every saved generation config stops on every end-of-turn id" in c["message"]


def test_fails_when_the_base_models_stop_set_was_kept(run_dir):
    """A Llama 3 base model's generation config (eos <|end_of_text|> only) saved unchanged: the model never stops
    at <|eot_id|>."""
    gen_config(run_dir, 128001)
    c = check_stop_ids(run_dir, {}, load_template("llama-3"))
    assert not c["passed"]
    assert c["problems"] == ["model/generation_config.json stops on [128001] but not on 128009 (<|eot_id|>)"]
    html = render_html({"scan": {"verdict": "pass", "headline": "", "generations": 0, "rates": {}, "groups": {},
                                 "over_threshold": [], "thresholds": {}, "counts": {}, "any_artifact_rate": 0.0},
                        "verdict": "fail", "stop_check": c})
    assert 'id="stop-check" data-passed="false"' in html and "MISSING" in html
    assert 'data-verdict="fail"' in html


def test_a_merged_model_is_checked_too_and_a_missing_config_fails(run_dir):
    gen_config(run_dir, [128001, 128009])
    gen_config(run_dir, [128001], sub="merged")
    c = check_stop_ids(run_dir, {}, load_template("llama-3"))
    assert not c["passed"] and c["problems"][0].startswith("merged/generation_config.json")
    (run_dir / "model" / "generation_config.json").unlink()
    c = check_stop_ids(run_dir, {}, load_template("llama-3"))
    assert "model/generation_config.json is missing or has no eos_token_id" in c["problems"]
