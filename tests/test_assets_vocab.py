"""The converted tokenizers are exact: every HF tokenization shipped beside the vocabularies is reproduced."""

from __future__ import annotations

import json
import shutil

import pytest

from tmplcheck import assets

EXACT_VOCABS = ["llama-bpe", "llama-spm", "phi-3", "qwen2", "gemma-4", "qwen35", "gpt-2"]


def test_read_vocab_tests_parses_like_llama_cpp():
    cases = assets.read_vocab_tests(assets.vocab_gguf("llama-bpe"))
    assert len(cases) == 46                      # the trailing separator adds no empty case
    texts = dict(cases)
    assert texts[" "] == [220] and texts["\n\n"] == [271] and texts["Hello world"] == [9906, 1917]
    assert cases[0][0] == "ied 4 \u00bd months"


@pytest.mark.parametrize("vocab", EXACT_VOCABS)
def test_converted_vocab_reproduces_every_hf_case(vocab):
    from tokenizers import Tokenizer

    res = assets.prepare_vocab(vocab)
    assert res.status in ("converted", "cached"), res.reason
    tk = Tokenizer.from_file(str(res.path / "tokenizer.json"))
    cases = assets.read_vocab_tests(assets.vocab_gguf(vocab))
    assert len(cases) >= 45
    wrong = [(t, want, tk.encode(t, add_special_tokens=False).ids) for t, want in cases
             if tk.encode(t, add_special_tokens=False).ids != want]
    assert wrong == []
    meta = assets.converted_meta(res.path)
    assert meta["verified"]["exact"] is True and meta["verified"]["cases"] == len(cases)


def test_llama3_conversion_matches_meta():
    d = assets.builtin_tokenizer_dir("llama-3")
    tj = json.loads((d / "tokenizer.json").read_text())
    assert tj["model"]["ignore_merges"] is True
    assert max(a["id"] for a in tj["added_tokens"]) == 128255          # no invented <|endoftext|>=128256
    post = json.dumps(tj["post_processor"])
    assert "TemplateProcessing" in post and "<|begin_of_text|>" in post
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    assert cfg["bos_token"] == "<|begin_of_text|>" and cfg["add_bos_token"] is True
    assert json.loads((d / "special_tokens_map.json").read_text())["bos_token"] == "<|begin_of_text|>"
    gen = json.loads((d / "generation_config.json").read_text())
    assert {128001, 128008, 128009} <= set(gen["eos_token_id"])


def test_prepare_is_idempotent_and_prints_a_table(capsys):
    assert assets.prepare_vocab("phi-3").path is not None
    again = assets.prepare_vocab("phi-3")
    assert again.status == "cached" and again.exact is True
    assert assets.main(["prepare", "--vocab", "phi-3", "--vocab", "qwen2"]) == 0
    out = capsys.readouterr().out
    assert "phi-3" in out and "qwen2" in out and "cached" in out


def test_convert_is_atomic_and_unsupported_vocab_fails_clearly(tmp_path):
    dest = tmp_path / "phi"
    res = assets.convert_gguf(assets.vocab_gguf("phi-3"), dest)
    assert res.exact is True and (dest / "tokenizer.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no staging left behind
    with pytest.raises(assets.AssetError, match="bert"):
        assets.convert_gguf(assets.vocab_gguf("bert-bge"), tmp_path / "bert")
    assert not (tmp_path / "bert").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    failed = assets.prepare_vocab("bert-bge")
    assert failed.status == "failed" and "bert" in failed.reason


def test_gguf_files_are_cached_by_their_header_fingerprint(tmp_path, monkeypatch):
    g = tmp_path / "model.gguf"
    shutil.copy(assets.vocab_gguf("phi-3"), g)
    monkeypatch.setenv("TMPLCHECK_CACHE", str(tmp_path / "cache"))
    d1 = assets.gguf_tokenizer_dir(g)
    assert d1.name == f"gguf-{assets.gguf_fingerprint(g)[:24]}"   # sha256 of header + key/values (gguf_header.py)
    mtime = (d1 / "tokenizer.json").stat().st_mtime_ns
    assert assets.gguf_tokenizer_dir(g) == d1
    assert (d1 / "tokenizer.json").stat().st_mtime_ns == mtime     # not converted twice
