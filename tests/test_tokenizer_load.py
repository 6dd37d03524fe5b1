"""load_tokenizer for every kind of spec, llama.cpp's own tokenizer, and the HF/llama.cpp comparison."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tmplcheck import assets
from tmplcheck.validator.tokenizer import (LlamaCppTokenizer, TokenizerLoadError, compare_ids,
                                           compare_with_llama_cpp, load_tokenizer)


def test_llama3_builtin_ids_bos_and_stop_set(llama3_tokenizer):
    t = llama3_tokenizer
    assert t.token_to_id("<|begin_of_text|>") == 128000 and t.token_to_id("<|eot_id|>") == 128009
    assert t.bos_id == 128000 and t.bos_token == "<|begin_of_text|>" and t.eos_id == 128001
    assert t.adds_bos is True and t.adds_eos is False
    assert {128001, 128008, 128009} <= t.stop_ids
    assert t.encode("Hello world").ids == [128000, 9906, 1917]             # Meta's tokenizer: BOS added
    assert t.encode("Hello world", add_special_tokens=False).ids == [9906, 1917]
    assert t.encode("<|eot_id|>", add_special_tokens=False).ids == [128009]
    assert t.hf_dir is not None and (t.hf_dir / "tokenizer.json").is_file()
    assert t.gguf_path is not None and t.gguf_path.name == "ggml-vocab-llama-bpe.gguf"


@pytest.mark.parametrize("name,adds_bos,bos", [("llama-2", True, "<s>"), ("phi-3", True, "<s>"),
                                               ("qwen2", False, "<|endoftext|>"), ("gemma-4", True, "<bos>")])
def test_builtin_bos_policy(get_tokenizer, name, adds_bos, bos):
    t = get_tokenizer(name)
    assert t.adds_bos is adds_bos and t.bos_token == bos
    ids = t.encode("hi").ids
    assert (ids[0] == t.bos_id) is adds_bos


def test_phi3_stop_set_and_rstrip(phi3_tokenizer):
    t = phi3_tokenizer
    assert {32000, 32007} <= t.stop_ids                                     # <|endoftext|>, <|end|>
    # like Microsoft's tokenizer.json (and llama.cpp), <|user|> eats the newline after it
    assert t.encode("<|user|>\nhi", add_special_tokens=False).ids == \
        t.encode("<|user|>hi", add_special_tokens=False).ids


def test_same_ids_as_transformers_autotokenizer(llama3_tokenizer, llama2_tokenizer):
    from transformers import AutoTokenizer

    text = "<|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|>"
    for t, s in ((llama3_tokenizer, text), (llama2_tokenizer, "[INST] Hi there! [/INST] Yo </s>")):
        hf = AutoTokenizer.from_pretrained(str(t.hf_dir))
        assert hf(s)["input_ids"] == t.encode(s).ids
        assert hf(s, add_special_tokens=False)["input_ids"] == t.encode(s, add_special_tokens=False).ids


def test_model_dir_merges_generation_config(tmp_path, llama3_tokenizer):
    d = tmp_path / "model"
    d.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(llama3_tokenizer.hf_dir / f, d / f)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["eos_token"] = {"content": "<|eot_id|>", "special": True}            # serialised AddedToken form
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    t = load_tokenizer(d)
    assert t.eos_id == 128009 and t.stop_ids == {128009}
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [128001, 128008, 128009]}))
    t = load_tokenizer(str(d))
    assert t.stop_ids == {128001, 128008, 128009} and t.generation_eos_ids == (128001, 128008, 128009)
    assert load_tokenizer(d / "tokenizer_config.json").stop_ids == t.stop_ids
    assert t.fingerprint and t.fingerprint != llama3_tokenizer.fingerprint


def test_bare_tokenizer_json(tmp_path, llama3_tokenizer):
    p = tmp_path / "tok.json"
    shutil.copy(llama3_tokenizer.hf_dir / "tokenizer.json", p)
    t = load_tokenizer(p)
    assert t.bos_token is None and t.hf_dir is None and t.adds_bos is False    # nothing says which id is BOS
    assert t.encode("Hello world").ids == [128000, 9906, 1917]
    # beside a tokenizer_config.json it picks the config up
    t2 = load_tokenizer(llama3_tokenizer.hf_dir / "tokenizer.json")
    assert t2.bos_id == 128000 and t2.adds_bos


def test_gguf_file_spec(tmp_path, monkeypatch):
    g = tmp_path / "my-model.gguf"
    shutil.copy(assets.vocab_gguf("phi-3"), g)
    monkeypatch.setenv("TMPLCHECK_CACHE", str(tmp_path / "cache"))
    t = load_tokenizer(str(g))
    assert t.gguf_path == g and t.hf_dir.parent == tmp_path / "cache" / "tokenizers"
    assert t.token_to_id("<|end|>") == 32007 and t.adds_bos


def _fake_hub_cache(root, repo_id, src_dir, commit="0123456789abcdef0123456789abcdef01234567"):
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        shutil.copy(src_dir / f, snap / f)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snap


def test_hub_id_offline_from_local_cache(tmp_path, monkeypatch, llama3_tokenizer):
    snap = _fake_hub_cache(tmp_path / "hub", "meta-llama/Llama-3.1-8B-Instruct", llama3_tokenizer.hf_dir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    t = load_tokenizer("meta-llama/Llama-3.1-8B-Instruct")
    assert t.hf_dir == snap and t.bos_id == 128000 and 128009 in t.stop_ids
    with pytest.raises(TokenizerLoadError, match="HF_HUB_OFFLINE"):
        load_tokenizer("someone/not-cached")


def test_unknown_spec_names_what_was_tried():
    with pytest.raises(TokenizerLoadError) as e:
        load_tokenizer("no-such-tokenizer")
    msg = str(e.value)
    assert "a directory" in msg and "a file" in msg and "built-in name" in msg and "llama-3" in msg
    assert "hub id" in msg


def test_loading_needs_no_torch_or_transformers(llama3_tokenizer):
    code = ("import sys; from tmplcheck.validator.tokenizer import load_tokenizer;"
            "from tmplcheck.validator.tokens import encode_conversation;"
            "t = load_tokenizer('llama-3'); t.encode('hi');"
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("vocab", ["llama-bpe", "phi-3", "qwen2"])
def test_llama_cpp_tokenizer_reproduces_hf_cases(vocab):
    with LlamaCppTokenizer(assets.vocab_gguf(vocab)) as lc:
        for text, want in assets.read_vocab_tests(assets.vocab_gguf(vocab)):
            assert lc.encode(text, add_special=False, parse_special=False) == want, text


def test_llama_cpp_tokenizer_special_tokens_and_bos():
    with LlamaCppTokenizer(assets.vocab_gguf("llama-bpe")) as lc:
        assert lc.bos_id == 128000 and lc.eot_id == 128009 and lc.add_bos
        assert lc.encode("<|begin_of_text|>Hi<|eot_id|>", add_special=True) == [128000, 128000, 13347, 128009]
        assert lc.encode("<|eot_id|>", add_special=False, parse_special=False) != [128009]
        assert {128001, 128009} <= lc.eog_ids


def test_compare_with_llama_cpp_agrees_on_chat_renders(get_tokenizer):
    renders = {
        "llama-3": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi\n\n\nthere  \n<|eot_id|>",
        "qwen2": "<|im_start|>user\nhi\n\n<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n",
        "phi-3": "<|user|>\nhi<|end|>\n<|assistant|>\nyo<|end|>\n",
        "gemma-4": "<bos><start_of_turn>user\nhi<end_of_turn>\n",
        "llama-2": "[INST] hi [/INST] there </s>",
    }
    for name, text in renders.items():
        t = get_tokenizer(name)
        assert compare_with_llama_cpp(t, text, add_special_tokens=False) is None, name


def test_compare_ids_reports_first_divergence(llama3_tokenizer):
    t = llama3_tokenizer
    enc = t.encode("a\n\nb", add_special_tokens=False)          # a, \n\n, b
    other = [enc.ids[0], 198, 198, enc.ids[2]]                    # \n \n split, as an older llama.cpp did
    d = compare_ids(enc.ids, other, tokenizer=t, offsets=enc.offsets)
    assert d.index == 1 and d.char_offset == 1 and d.hf_ids[0] == 271 and d.other_ids[:2] == (198, 198)
    assert d.hf_tokens[0] == "ĊĊ" and "token 1" in d.describe()
    assert compare_ids(enc.ids, list(enc.ids)) is None
    with pytest.raises(ValueError, match="no GGUF"):
        from tmplcheck.validator.tokenizer import Tokenizer
        compare_with_llama_cpp(Tokenizer(t.backend, name="bare"), "x")


def test_llama_cpp_vocabulary_prefetched_while_the_tokenizer_loads(tmp_path):
    """The gate asks ``load_tokenizer`` to start loading llama.cpp's vocabulary in a background thread; the one
    instance per file is what K010 then uses, and a file that cannot load fails where it is asked for."""
    from tmplcheck.validator import tokenizer as T

    tok = T.load_tokenizer("llama-3", prefetch_llama_cpp=True)
    assert tok.gguf_path is not None
    T.before_fork()
    lc = T.llama_cpp_tokenizer(tok.gguf_path)
    assert lc is T.llama_cpp_tokenizer(tok.gguf_path) is T.llama_cpp_tokenizer_for(tok)
    assert lc.encode("<|eot_id|>", add_special=False) == [128009]
    bad = tmp_path / "not-a-vocab.gguf"
    bad.write_bytes(b"GGUF but not really")
    T.prefetch_llama_cpp_tokenizer(bad)
    T.before_fork()
    with pytest.raises(ValueError, match="could not load"):
        T.llama_cpp_tokenizer(bad)
