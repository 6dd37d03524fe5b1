"""``Tokenizer.encode_batch_spans``: ids and character spans as arrays. For byte-level BPE vocabularies the spans
come from the ids alone (a byte-length table); they must equal the tokenizer's own offsets on any text, with and
without the post-processor's tokens. Other tokenizers use the offsets they report."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tmplcheck.validator import strategies as S
from tmplcheck.validator.tokenizer import load_tokenizer

_TOKS: dict = {}


def tok(name):
    if name not in _TOKS:
        _TOKS[name] = load_tokenizer(name)
    return _TOKS[name]


@pytest.mark.parametrize("name,byte_level", [("llama-3", True), ("qwen2", True), ("gpt-2", True),
                                             ("llama-2", False), ("phi-3", False)])
def test_which_tokenizers_get_ids_only_spans(name, byte_level):
    assert (tok(name)._byte_table() is not None) is byte_level


def leading_ones(mask):
    n = 0
    while n < len(mask) and mask[n]:
        n += 1
    return n


def _texts(t):
    specials = [t.id_to_token(i) for i in sorted(t.special_ids)[:8]]
    piece = st.one_of(S.content(specials), st.sampled_from(specials + ["\r\n", "\n\n\n", "  ", "😀", "e\u0301"]))
    return st.lists(piece, max_size=6).map("".join)


@pytest.mark.parametrize("name", ["llama-3", "qwen2", "gpt-2", "llama-2"])
def test_spans_equal_the_tokenizers_offsets(name):
    t = tok(name)

    @settings(max_examples=150, deadline=None)
    @given(st.lists(_texts(t), min_size=1, max_size=5), st.booleans())
    def check(texts, add):
        got = t.encode_batch_spans(texts, add_special_tokens=add)
        want = t.encode_batch(texts, add_special_tokens=add)
        for g, w in zip(got, want):
            assert g.ids == w.ids
            assert g.offsets() == list(w.offsets)
            mask = list(w.special_tokens_mask)
            assert (g.front, g.back) == (leading_ones(mask), leading_ones(mask[::-1][: len(mask) - g.front]))

    check()


def test_a_row_whose_lengths_do_not_add_up_is_encoded_with_offsets(monkeypatch):
    """The per-row guard: a table that disagrees with a text falls back to the tokenizer's own offsets."""
    t = tok("llama-3")
    table = t._byte_table().copy()
    bad = t.encode("hello", add_special_tokens=False).ids[0]
    table[bad] += 1
    monkeypatch.setattr(t, "_bytes", table)
    [sp] = t.encode_batch_spans(["hello world"], add_special_tokens=False)
    assert sp.encoding is not None and sp.offsets() == list(t.encode("hello world", add_special_tokens=False).offsets)


def test_an_id_past_the_table_is_encoded_with_offsets(monkeypatch):
    """A table shorter than the vocabulary (an added token it does not know): that row falls back too."""
    t = tok("llama-3")
    monkeypatch.setattr(t, "_bytes", t._byte_table()[:1000])
    text = "hello<|eot_id|>"
    [sp] = t.encode_batch_spans([text], add_special_tokens=False)
    assert sp.encoding is not None and sp.offsets() == list(t.encode(text, add_special_tokens=False).offsets)
