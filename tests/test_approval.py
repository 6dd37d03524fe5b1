"""Approval stamps: written atomically next to a passed dataset; every changed part is named on verification."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tmplcheck.validator import approval as A
from tmplcheck.validator.gate import GateOptions, run_gate
from tmplcheck.validator.stages import StageConfig, build_stages

ROOT = Path(__file__).resolve().parent.parent
TWEETS = ROOT / "fixtures" / "train" / "tweets.jsonl"
BAD = ROOT / "fixtures" / "dataset" / "empty_content.jsonl"


@pytest.fixture(scope="module")
def llama3_dir() -> Path:
    from tmplcheck.validator.tokenizer import load_tokenizer

    return load_tokenizer("llama-3").hf_dir


def gate(data: Path, cfg: StageConfig):
    """The real gate with the stages ``cfg`` names (stamps vouch only for what was checked)."""
    return run_gate(data, GateOptions(stages=build_stages(cfg), jobs=1))


@pytest.fixture
def stamped(tmp_path):
    data = tmp_path / "tweets.jsonl"
    shutil.copy(TWEETS, data)
    cfg = StageConfig(template="llama-3", tokenizer="llama-3", max_length=256, extra={"jobs": 1})
    res = gate(data, cfg)
    assert res.passed
    return data, cfg, A.write_stamps(res, cfg)


def kinds(msgs: list[str]) -> list[str]:
    return [m.split(":", 1)[0] for m in msgs]


def test_stamp_written_next_to_dataset(stamped):
    data, cfg, path = stamped
    assert path == data.with_name("tweets.jsonl.tmplcheck.json")
    assert sorted(p.name for p in data.parent.iterdir()) == ["tweets.jsonl", "tweets.jsonl.tmplcheck.json"]
    s = json.loads(path.read_text())
    assert s["tmplcheck_stamp"] == A.STAMP_FORMAT
    assert s["bytes"]["sha256"] == A.sha256_file(data)
    assert s["template"]["name"] == "llama-3" and len(s["template"]["sha256"]) == 64
    assert "tokenizer.json" in s["tokenizer"]["files"]
    assert s["config"]["settings"] == {"max_length": 256}  # jobs is neutral
    assert s["summary"]["passed"] is True and s["summary"]["rows"] == 24
    from tmplcheck import __version__

    assert s["version"] == __version__


def test_matching_stamp_verifies(stamped):
    data, cfg, _ = stamped
    assert A.verify_stamp(data, "llama-3", "llama-3", cfg) == []
    # the same template given as its file and the tokenizer as its directory hash the same
    from tmplcheck.templates import load_template
    from tmplcheck.validator.tokenizer import load_tokenizer

    assert A.verify_stamp(data, load_template("llama-3"), load_tokenizer("llama-3"), cfg) == []


def test_failed_gate_is_not_stamped(tmp_path):
    data = tmp_path / "bad.jsonl"
    shutil.copy(BAD, data)
    res = run_gate(data)
    assert not res.passed
    with pytest.raises(A.StampError, match="error"):
        A.write_stamps(res, StageConfig(template="llama-3"))
    assert not A.stamp_path(data).exists()


def test_no_stamp(tmp_path):
    data = tmp_path / "d.jsonl"
    shutil.copy(TWEETS, data)
    msgs = A.verify_stamp(data, "llama-3", "llama-3", StageConfig())
    assert kinds(msgs) == ["stamp"] and "no approval stamp" in msgs[0]


def test_changed_bytes(stamped):
    data, cfg, _ = stamped
    with open(data, "a") as fh:
        fh.write(TWEETS.read_text().splitlines()[0] + "\n")
    msgs = A.verify_stamp(data, "llama-3", "llama-3", cfg)
    assert kinds(msgs) == ["bytes"]
    assert "dataset changed" in msgs[0]


def test_changed_template(stamped, tmp_path):
    data, cfg, _ = stamped
    from tmplcheck.templates import load_template

    src = load_template("llama-3").source
    edited = tmp_path / "llama-3-edited.jinja"
    edited.write_text(src.replace("| trim + '<|eot_id|>'", "| trim"))  # the seed's bug: no end-of-turn
    assert edited.read_text() != src
    msgs = A.verify_stamp(data, str(edited), "llama-3", cfg)
    assert kinds(msgs) == ["template"]
    assert "llama-3-edited.jinja" in msgs[0]


def test_changed_tokenizer(stamped, tmp_path, llama3_dir):
    data, cfg, _ = stamped
    tdir = tmp_path / "tok"
    shutil.copytree(llama3_dir, tdir)
    conf = json.loads((tdir / "tokenizer_config.json").read_text())
    conf["eos_token"] = "<|eot_id|>"
    (tdir / "tokenizer_config.json").write_text(json.dumps(conf))
    msgs = A.verify_stamp(data, "llama-3", str(tdir), cfg)
    assert kinds(msgs) == ["tokenizer"]
    assert "tokenizer_config.json" in msgs[0] and "tokenizer.json" not in msgs[0].split("differ:")[1]


def test_changed_config(stamped):
    data, _, _ = stamped
    msgs = A.verify_stamp(data, "llama-3", "llama-3", StageConfig(template="llama-3", max_length=128))
    assert kinds(msgs) == ["config"]
    assert "max_length: 256 → 128" in msgs[0]
    # select/ignore narrow what the gate checked: they are part of the configuration
    msgs = A.verify_stamp(data, "llama-3", "llama-3",
                          StageConfig(max_length=256, extra={"ignore": ["K"], "jobs": 4}))
    assert kinds(msgs) == ["config"] and "ignore" in msgs[0]


def test_changed_version_and_several_parts(stamped):
    data, cfg, path = stamped
    s = json.loads(path.read_text())
    s["version"] = "0.0.1"
    path.write_text(json.dumps(s))
    data.write_text(data.read_text().replace("MY CAT", "MY DOG"))
    msgs = A.verify_stamp(data, "llama-3", "llama-3", StageConfig(template="llama-3", max_length=64))
    assert kinds(msgs) == ["bytes", "config", "version"]


def test_unreadable_or_failed_stamp(stamped):
    data, cfg, path = stamped
    s = json.loads(path.read_text())
    s["summary"]["passed"] = False
    path.write_text(json.dumps(s))
    assert kinds(A.verify_stamp(data, "llama-3", "llama-3", cfg)) == ["stamp"]
    path.write_text("{not json")
    msgs = A.verify_stamp(data, "llama-3", "llama-3", cfg)
    assert kinds(msgs) == ["stamp"] and "unreadable" in msgs[0]


def test_stamp_write_is_atomic(stamped, monkeypatch):
    data, cfg, path = stamped
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    import tmplcheck.fsutil

    monkeypatch.setattr(tmplcheck.fsutil.os, "fsync", boom)  # fail after the bytes were written, before the rename
    with pytest.raises(OSError):
        A.write_stamps(gate(data, cfg), cfg)
    assert path.read_bytes() == before
    assert sorted(p.name for p in data.parent.iterdir()) == ["tweets.jsonl", "tweets.jsonl.tmplcheck.json"]


def test_approved_without_tokenizer_check(tmp_path):
    """`check --template T` alone runs no token/mask checks: such a stamp does not approve training."""
    data = tmp_path / "d.jsonl"
    shutil.copy(TWEETS, data)
    cfg = StageConfig(template="llama-3")
    A.write_stamps(gate(data, cfg), cfg)
    assert json.loads(A.stamp_path(data).read_text())["tokenizer"] is None
    msgs = A.verify_stamp(data, "llama-3", "llama-3", cfg)
    assert kinds(msgs) == ["tokenizer"] and "without a tokenizer check" in msgs[0]


def test_stamps_only_what_was_checked(tmp_path):
    """A passed result whose summary lacks a stage its configuration names is not stamped: not the D checks
    alone, not a token configuration checked without its token stage, not another template than the one named."""
    data = tmp_path / "d.jsonl"
    shutil.copy(TWEETS, data)
    d_only = run_gate(data)
    assert d_only.passed
    with pytest.raises(A.StampError, match="only the dataset checks ran"):
        A.write_stamps(d_only, StageConfig())
    with pytest.raises(A.StampError, match="did not run the template stage"):
        A.write_stamps(d_only, StageConfig(template="llama-3"))
    templ_only = gate(data, StageConfig(template="llama-3"))
    with pytest.raises(A.StampError, match="did not run the token stage"):
        A.write_stamps(templ_only, StageConfig(template="llama-3", tokenizer="llama-3"))
    with pytest.raises(A.StampError, match="another template"):
        A.write_stamps(templ_only, StageConfig(template="chatml"))
    assert not A.stamp_path(data).exists()
    assert A.write_stamps(templ_only, StageConfig(template="llama-3")).is_file()
