"""One settings model: check, show, probe and train read the same settings file the same way, and the approval
stamp compares what the gate would run now with what it ran then, whichever way the settings were given."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from tmplcheck.cli import cli
from tmplcheck.config import ConfigError, Settings

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"
TWEETS = FIX / "train" / "tweets.jsonl"


def invoke(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r



def approve_for_train(data: Path, **settings_flags):
    """What `tmplcheck train DATA` does before loading anything: verify the stamp with the settings it reads."""
    from tmplcheck.trainer.recipe import Hooks, TrainConfig, approve

    st = Settings.resolve(data, **settings_flags)
    return approve(TrainConfig(data=data, model="x/y", template=st.template, tokenizer=st.tokenizer,
                               max_length=st.max_length, settings=st), Hooks())


def test_settings_file_round_trip_check_approve_then_train(tmp_path, base_tok):
    """The issue's case: `ignore = ["K005"]` in tmplcheck.toml next to the data; check --approve stamps; train,
    with no flags repeated, accepts the stamp (it used to refuse: ignore ['K005'] -> None)."""
    data = tmp_path / "tweets.jsonl"
    shutil.copy(TWEETS, data)
    (tmp_path / "tmplcheck.toml").write_text(
        f'template = "llama-3"\ntokenizer = "{base_tok}"\nmax_length = 256\nignore = ["K005"]\n')
    r = invoke("check", data, "--approve", "--format", "json")
    assert r.exit_code == 0, r.output
    stamp = json.loads(data.with_name(data.name + ".tmplcheck.json").read_text())
    assert stamp["config"]["settings"] == {"max_length": 256, "ignore": ["K005"]}
    got, tok, max_length, revalidated = approve_for_train(data)
    assert got["bytes"] == stamp["bytes"] and tok == base_tok and max_length == 256 and not revalidated
    # the same setting given as a flag, written another way (a name, lower case): the same configuration
    assert approve_for_train(data, config=tmp_path / "tmplcheck.toml", ignore=["end-of-turn-not-a-stop-id"])
    # a different setting is named
    from tmplcheck.trainer.recipe import Refused

    with pytest.raises(Refused) as e:
        approve_for_train(data, ignore=["K005", "D014"])
    assert any(m.startswith("config:") and "'D014'" in m for m in e.value.reasons)


def test_flags_and_file_give_the_same_stamp(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for d in (a, b):
        shutil.copy(TWEETS, d / "tweets.jsonl")
    (a / "tmplcheck.toml").write_text('template = "llama-3"\ntokenizer = "llama-3"\nselect = "D,K,T,X,M"\n'
                                      'ignore = ["k005", "empty-content"]\nadd_special_tokens = "auto"\n')
    assert invoke("check", a / "tweets.jsonl", "--approve").exit_code == 0
    assert invoke("check", b / "tweets.jsonl", "-t", "llama-3", "-k", "llama-3", "--select", "X,T,D",
                  "--select", "M,K", "--ignore", "D013,K005", "--approve").exit_code == 0
    sa, sb = (json.loads((d / "tweets.jsonl.tmplcheck.json").read_text())["config"] for d in (a, b))
    assert sa == sb and sa["settings"]["ignore"] == ["D013", "K005"]


def test_for_train_is_stamped_and_train_accepts_it(tmp_path, base_tok):
    data = tmp_path / "tweets.jsonl"
    shutil.copy(TWEETS, data)
    r = invoke("check", data, "-t", "llama-3", "-k", base_tok, "--approve")
    assert r.exit_code == 1 and "K005" in r.output and not data.with_name(data.name + ".tmplcheck.json").exists()
    r = invoke("check", data, "-t", "llama-3", "-k", base_tok, "--for-train", "--approve")
    assert r.exit_code == 0, r.output
    stamp = json.loads(data.with_name(data.name + ".tmplcheck.json").read_text())
    assert stamp["config"]["settings"]["for_train"] is True
    approve_for_train(data, template="llama-3", tokenizer=base_tok)


def test_show_and_probe_read_the_same_settings(tmp_path):
    data = tmp_path / "rows.jsonl"
    shutil.copy(FIX / "tokens" / "control_in_content.jsonl", data)
    (tmp_path / "tmplcheck.toml").write_text('template = "llama-3"\ntokenizer = "llama-3"\n')
    r = invoke("show", data, "--line", "2", "--format", "json")
    assert r.exit_code == 0 and [f["code"] for f in json.loads(r.output)["findings"]] == ["K006"]
    (tmp_path / "tmplcheck.toml").write_text('template = "llama-3"\ntokenizer = "llama-3"\nignore = ["K006"]\n')
    r = invoke("show", data, "--line", "2", "--format", "json")
    assert json.loads(r.output)["findings"] == []
    r = invoke("show", data, "--line", "2", "--format", "json", "--config", tmp_path / "tmplcheck.toml",
               "--select", "K")
    assert json.loads(r.output)["findings"] == []   # the file's ignore still applies; flags only add
    r = invoke("probe", "--config", tmp_path / "tmplcheck.toml", "--examples", "5", "--property", "deterministic",
               "--format", "json")
    assert r.exit_code == 0 and json.loads(r.output)["template"] == "llama-3"


def test_bad_settings_are_usage_errors(tmp_path):
    bad = tmp_path / "tmplcheck.toml"
    for text, needle in [('ignore = ["NOPE"]\n', "matches no finding code"), ("max_length = -3\n", "positive"),
                         ('add_special_tokens = "maybe"\n', "auto, yes or no"), ("colour = 1\n", "unknown setting")]:
        bad.write_text(text)
        with pytest.raises(ConfigError, match=needle):
            Settings.resolve(None, bad)
        r = invoke("check", TWEETS, "--config", bad)
        assert r.exit_code == 2 and needle in r.output
    r = invoke("check", TWEETS, "--approve")
    assert r.exit_code == 2 and "--approve needs --template and --tokenizer" in r.output


def test_scan_and_report_take_the_same_select_ignore(tmp_path):
    gen = tmp_path / "gen.jsonl"
    shutil.copy(FIX / "generations" / "trailing_role_word.jsonl", gen)
    assert invoke("scan", gen, "-t", "llama-3").exit_code == 1
    assert invoke("scan", gen, "-t", "llama-3", "--ignore", "trailing-role-word").exit_code == 0
    assert invoke("scan", gen, "-t", "llama-3", "--select", "A002").exit_code == 0
    (tmp_path / "tmplcheck.toml").write_text('select = ["D", "K"]\n')   # written for the gate: A codes stay in
    assert invoke("scan", gen, "-t", "llama-3").exit_code == 1
    (tmp_path / "tmplcheck.toml").write_text('ignore = ["A001"]\n')
    assert invoke("scan", gen, "-t", "llama-3").exit_code == 0
    assert invoke("scan", gen, "-t", "llama-3", "--threshold", "A001=0").exit_code == 1   # named: it counts again
    assert "--select" in invoke("report", "--help").output


def test_paths_in_the_settings_file_are_relative_to_it(tmp_path, monkeypatch):
    (tmp_path / "tpl").mkdir()
    shutil.copy(FIX / "templates" / "llama-3-no-eot.jinja", tmp_path / "tpl" / "t.jinja")
    (tmp_path / "tmplcheck.toml").write_text('template = "tpl/t.jinja"\ntokenizer = "llama-3"\n')
    monkeypatch.chdir(ROOT)
    st = Settings.resolve(tmp_path / "data.jsonl")
    assert st.template == str(tmp_path / "tpl" / "t.jinja") and st.tokenizer == "llama-3"
    assert st.source == tmp_path / "tmplcheck.toml"
