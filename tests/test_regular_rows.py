"""The gate's regular-row path (``checks.tokens.regular_row`` over ids and span arrays, on rows filled into their
shape's render where the template is content-opaque) gives exactly the full checks' result (on rendered rows): on
every token fixture with its template/tokenizer pair, and on generated conversations for the built-in pairs. Both
runs turn the sampled checks off (prompt renders, llama.cpp ids) so that every row is eligible for the regular path;
the ids-only spans are compared with the tokenizer's own offsets in test_tokenizer_spans."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tmplcheck.templates import load_template
from tmplcheck.validator import strategies as S
from tmplcheck.validator.ingest import open_records, parse_record
from tmplcheck.validator.token_pipeline import TokenPipeline, row_in
from tmplcheck.validator.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures" / "tokens"
BROKEN = ROOT / "fixtures" / "templates"
NEVER = 10 ** 9


def pipelines(template: str, tokenizer: str, max_length: int | None = None):
    tok = load_tokenizer(tokenizer)
    tmpl = load_template(template)
    kw = dict(max_length=max_length, llamacpp_vocab=None, prefix_all=0, prefix_every=NEVER, generation_all=0,
              generation_every=NEVER)
    # the fast pipeline fills content-opaque templates' shape renders (validator/opaque.py); the full one renders
    return TokenPipeline(tmpl, tok, regular=True, **kw), TokenPipeline(tmpl, tok, regular=False, fill=False, **kw)


def rows_of(path: Path):
    with open(path, "rb") as fh:
        is_array, records = open_records(fh, str(path))
        out = []
        for rec in records:
            conv = parse_record(rec.line, rec.data, rec.findings, path=str(path), is_array=is_array).conversation
            if conv is not None and conv.usable and conv.messages:
                out.append(row_in(conv))
    return out


def outcome(r):
    return r.line, r.tokens, r.trained, sorted((f.code, f.pointer, f.message) for f in r.findings)


PAIRS = [
    ("clean.jsonl", "llama-3", "llama-3", 4096), ("clean.jsonl", "chatml", "qwen2", None),
    ("clean.jsonl", "llama-3.1", "llama-3", None), ("clean.jsonl", "mistral-v1", "llama-2", None),
    ("clean.jsonl", "qwen2.5", "qwen2", None), ("clean.jsonl", "phi-3", "phi-3", None),
    ("eot_missing.jsonl", str(BROKEN / "broken_no_eot.jinja"), "llama-3", None),
    ("control_in_content.jsonl", "llama-3", "llama-3", None),
    ("over_max_length.jsonl", "llama-3", "llama-3", 64),
    ("header_merge.jsonl", "chatml", "qwen2", None),
    ("mask_boundary_merge.jsonl", str(BROKEN / "broken_no_space.jinja"), "llama-2", None),
    ("content_changed.jsonl", str(BROKEN / "broken_drop_system.jinja"), "qwen2", None),
    ("no_trained_tokens.jsonl", "llama-3", "llama-3", None),
    ("generation_header_trained.jsonl", str(BROKEN / "broken_generation_header.jinja"), "qwen2", None),
    ("generation_eot_masked.jsonl", str(BROKEN / "broken_generation_eot.jinja"), "qwen2", None),
    ("double_bos.jsonl", "llama-3", "llama-3", None), ("missing_bos.jsonl", "llama-3", "llama-3", None),
    ("eot_not_stop.jsonl", "llama-3", "llama-3", None),
]


@pytest.mark.parametrize("fixture,template,tokenizer,max_length", PAIRS,
                         ids=[f"{p[0]}-{Path(p[1]).stem}-{p[2]}" for p in PAIRS])
def test_regular_path_equals_full_checks_on_fixtures(fixture, template, tokenizer, max_length):
    fast, full = pipelines(template, tokenizer, max_length)
    rows = rows_of(FIX / fixture)
    a, b = fast.process(rows, 1), full.process(rows, 1)
    assert [outcome(x) for x in a] == [outcome(x) for x in b]
    assert not any(x.regular for x in b)
    if fixture == "clean.jsonl" and tokenizer in ("llama-3", "qwen2"):
        assert all(x.regular for x in a)       # byte-level pairs: clean rows take the regular path


def test_irregular_rows_take_the_full_path():
    """Rows with findings beyond BOS never come out of the regular path."""
    for fixture, template, tokenizer, max_length in PAIRS[6:]:
        fast, _ = pipelines(template, tokenizer, max_length)
        for r in fast.process(rows_of(FIX / fixture), 1):
            if r.regular:
                assert {f.code for f in r.findings} <= {"K002", "K003"}


_PAIRS_GEN = [("llama-3", "llama-3"), ("chatml", "qwen2"), ("qwen2.5", "qwen2"), ("llama-3.1", "llama-3")]
_CACHE: dict = {}


def _pair(i: int):
    if i not in _CACHE:
        _CACHE[i] = pipelines(*_PAIRS_GEN[i])
    return _CACHE[i]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(_PAIRS_GEN) - 1), st.lists(S.conversations(("<|eot_id|>", "<|im_end|>", "<|im_start|>")),
                                                     min_size=1, max_size=4))
def test_regular_path_equals_full_checks_on_generated_rows(pair, convs):
    fast, full = _pair(pair)
    rows = [(k + 1, [(m["role"], m["content"], f"/messages/{i}/content", f"/messages/{i}/role", ())
                     for i, m in enumerate(c)]) for k, c in enumerate(convs) if c]
    if not rows:
        return
    assert [outcome(x) for x in fast.process(rows, 1)] == [outcome(x) for x in full.process(rows, 1)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(_PAIRS_GEN) - 1), st.lists(S.valid_conversations(clean=True), min_size=1, max_size=4))
def test_clean_generated_rows_are_regular(pair, convs):
    """Good data takes the regular path (else the gate would be slow exactly where it matters)."""
    fast, full = _pair(pair)
    rows = [(k + 1, [(m["role"], m["content"], f"/messages/{i}/content", f"/messages/{i}/role", ())
                     for i, m in enumerate(c)]) for k, c in enumerate(convs)]
    a = fast.process(rows, 1)
    assert [outcome(x) for x in a] == [outcome(x) for x in full.process(rows, 1)]
    for r in a:
        if not r.findings:
            assert r.regular, r


@pytest.mark.parametrize("template,tokenizer", [("llama-3", "llama-3"), ("chatml", "qwen2")])
def test_batch_regular_test_agrees_with_the_per_row_one(template, tokenizer):
    """The regular-row test over a whole batch at once (``TokenPipeline._regular_batch``, on the batch's spans as one
    text) takes the clean ASCII rows of a byte-level pair and gives what the per-row test (``_fast``) gives."""
    fast, _ = pipelines(template, tokenizer, 4096)
    rows = rows_of(FIX / "clean.jsonl")
    prep = fast.prepare(rows, list(range(1, 1 + len(rows))))
    spans = fast.tokenize(prep)
    assert spans.flat is not None
    got = fast._regular_batch(prep, spans)
    one = {k: fast._fast(row, m, loc, sp, o, None) for k, (row, m, loc, sp, o) in
           enumerate(zip(prep.rows, prep.msgs, prep.located, spans, prep.ordinals))}
    ascii_rows = [k for k in one if spans.flat.exact[k]]
    assert ascii_rows and sorted(got) == [k for k in ascii_rows if one[k] is not None]
    assert [outcome(got[k]) for k in sorted(got)] == [outcome(one[k]) for k in sorted(got)]
