"""The shared hypothesis strategies, and the properties the built-in templates must satisfy on them."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tmplcheck.templates import load_template
from tmplcheck.validator import strategies as S
from tmplcheck.validator.tokenizer import load_tokenizer

LLAMA3 = load_template("llama-3")


@given(S.valid_conversations(clean=True))
@settings(max_examples=60, deadline=None)
def test_valid_conversations_alternate(conv):
    roles = [m["role"] for m in conv]
    if roles[0] == "system":
        roles = roles[1:]
    assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
    assert all(m["content"] == m["content"].strip() and m["content"] for m in conv)


@given(S.content(("<|eot_id|>",), long=False))
@settings(max_examples=200, deadline=None)
def test_content_covers_edges_and_control_strings(c):
    assert isinstance(c, str)


def test_content_strategy_reaches_every_kind():
    seen = set()
    strat = S.content(("<|eot_id|>",))

    @given(strat)
    @settings(max_examples=400, deadline=None, database=None)
    def collect(c):
        if c == "":
            seen.add("empty")
        elif c != c.strip():
            seen.add("edges")
        if "<|eot_id|>" in c:
            seen.add("control")
        if len(c) > 500:
            seen.add("long")
        if any(d in c for d in ("{{", "{%", "[INST]", "<|im_start|>")):
            seen.add("delimiter")

    collect()
    assert seen == {"empty", "edges", "control", "long", "delimiter"}


@given(S.valid_conversations(clean=True))
@settings(max_examples=40, deadline=None)
def test_llama3_render_holds_every_content_once(conv):
    text = LLAMA3.render(conv)
    pos = 0
    for m in conv:
        k = text.find(m["content"], pos)
        assert k >= 0
        pos = k + len(m["content"])


@given(S.any_conversations(("<|im_end|>",)))
@settings(max_examples=60, deadline=None)
def test_any_order_never_crashes_the_token_stage(conv):
    """Invalid orders and any content: the pipeline yields findings or skips the row, never raises."""
    from tmplcheck.validator.token_pipeline import TokenPipeline

    global _PIPE
    try:
        pipe = _PIPE
    except NameError:
        tok = load_tokenizer("qwen2")
        pipe = _PIPE = TokenPipeline(load_template("chatml"), tok, max_length=64)
    row = (1, [(m["role"], m["content"], f"/messages/{i}/content", f"/messages/{i}/role", ())
               for i, m in enumerate(conv)])
    out = pipe.process_row(row)
    assert out.line == 1


@given(st.data())
@settings(max_examples=20, deadline=None)
def test_dataset_rows_are_ingestible(data):
    import json

    from tmplcheck.validator.ingest import parse_row

    row = data.draw(S.dataset_rows(fmt=data.draw(st.sampled_from(["sharegpt", "openai"]))))
    conv, _ = parse_row(json.loads(json.dumps(row)), path="x", line=1)
    assert conv is not None and conv.messages
