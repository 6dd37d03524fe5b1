"""encode_conversation on real templates and real vocabularies: ids, labels, spans, BOS, truncation."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tmplcheck.templates import load_template
from tmplcheck.validator.render import HFRenderer, TemplateRenderError
from tmplcheck.validator.tokens import IGNORE_INDEX, encode_conversation, encode_conversations

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "6, since 3+3=6."},
]


def trained_text(tok, ec):
    """The trained tokens decoded per contiguous run."""
    runs, cur = [], []
    for i, lab in zip(ec.ids, ec.labels):
        if lab != IGNORE_INDEX:
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


@pytest.mark.parametrize("template,tokenizer,eot", [("llama-3", "llama-3", "<|eot_id|>"),
                                                    ("chatml", "qwen2", "<|im_end|>"),
                                                    ("qwen2.5", "qwen2", "<|im_end|>"),
                                                    ("phi-3", "phi-3", "<|end|>")])
def test_labels_are_assistant_content_plus_end_of_turn(get_tokenizer, template, tokenizer, eot):
    tok = get_tokenizer(tokenizer)
    tpl = load_template(template)
    ec = encode_conversation(tpl, tok, CONV)
    assert trained_text(tok, ec) == ["4." + eot, "6, since 3+3=6." + eot]
    assert len(ec.ids) == len(ec.labels) == len(ec.offsets) == len(ec.tokens)
    a1, a2 = ec.span_of(2), ec.span_of(4)
    for s, content in ((a1, "4."), (a2, "6, since 3+3=6.")):
        assert ec.text[s.content_start:s.content_end] == content
        assert s.trained and s.eot_single and ec.ids[s.eot_index] == tok.token_to_id(eot)
        assert ec.labels[s.eot_index] == ec.ids[s.eot_index]
        assert s.straddle_start is None and s.straddle_end is None
    for s in ec.spans[:2] + [ec.span_of(3)]:
        assert not s.trained and all(ec.labels[j] == IGNORE_INDEX for j in range(s.token_start, s.token_end))
    # every message's content is found in order
    assert [ec.text[s.content_start:s.content_end] for s in ec.spans] == [m["content"] for m in CONV]
    # the {% generation %} training variant marks exactly the same tokens
    if ec.generation_labels is not None:
        assert ec.generation_labels == ec.labels


def test_double_bos_is_reported_both_ways(llama3_tokenizer):
    tpl = load_template("llama-3")                    # writes <|begin_of_text|> itself
    ec = encode_conversation(tpl, llama3_tokenizer, CONV[1:3], add_special_tokens=True)
    assert ec.template_bos and ec.adds_bos and ec.bos_count == 2 and ec.ids[:2] == [128000, 128000]
    assert ec.special_mask[0] == 1 and ec.special_mask[1] == 0
    ec1 = encode_conversation(tpl, llama3_tokenizer, CONV[1:3], add_special_tokens=False)
    assert ec1.bos_count == 1 and not ec1.adds_bos and ec1.ids == ec.ids[1:]
    assert ec1.labels == ec.labels[1:]
    # the default is the trainer's policy: no post-processor BOS when the template writes it and the tokenizer adds it
    auto = encode_conversation(tpl, llama3_tokenizer, CONV[1:3])
    assert not auto.add_special_tokens and auto.bos_count == 1 and auto.ids == ec1.ids


def test_bos_in_template_ignores_jinja_comments():
    from tmplcheck.templates.loader import writes_bos

    assert writes_bos("{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}")
    assert not writes_bos("{# no bos_token here: the tokenizer adds it #}{% for m in messages %}{{ m.content }}"
                          "{% endfor %}")
    assert writes_bos("{# comment #}<s>{{ messages[0].content }}", "<s>")
    assert not writes_bos("{# <s> #}{{ messages[0].content }}", "<s>")


def test_no_bos_when_neither_writes_it(qwen2_tokenizer):
    ec = encode_conversation(load_template("chatml"), qwen2_tokenizer, CONV[1:3])
    assert ec.bos_count == 0 and not ec.template_bos and not ec.adds_bos


def test_trimmed_content_is_located(llama3_tokenizer):
    msgs = [{"role": "user", "content": "  hi \n"}, {"role": "assistant", "content": "\n hello there  "}]
    ec = encode_conversation(load_template("llama-3"), llama3_tokenizer, msgs)
    s = ec.span_of(1)
    assert ec.text[s.content_start:s.content_end] == "hello there" and s.method == "sentinel-strip"
    assert trained_text(llama3_tokenizer, ec) == ["hello there<|eot_id|>"]


def test_boundary_merge_is_recorded(qwen2_tokenizer):
    # chatml writes "<|im_start|>assistant\n"; content starting with "\n" merges into one "\n\n" token
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\nhello"}]
    ec = encode_conversation(load_template("chatml"), qwen2_tokenizer, msgs)
    s = ec.span_of(1)
    assert s.straddle_start is not None
    j = s.straddle_start
    assert ec.offsets[j][0] < s.content_start < ec.offsets[j][1] and ec.tokens[j] == "ĊĊ"
    assert ec.labels[j] == IGNORE_INDEX             # starts in the template: masked, but flagged on the span


def test_max_length_truncation_marks_the_turn(llama3_tokenizer):
    tpl = load_template("llama-3")
    full = encode_conversation(tpl, llama3_tokenizer, CONV)
    cut = full.span_of(4).eot_index                 # cut right before the last <|eot_id|>
    ec = encode_conversation(tpl, llama3_tokenizer, CONV, max_length=cut)
    assert ec.truncated and ec.full_length == len(full.ids) and len(ec.ids) == cut == len(ec.labels)
    assert ec.span_of(4).truncated and not ec.span_of(2).truncated
    assert ec.ids == full.ids[:cut] and ec.labels == full.labels[:cut]
    assert not encode_conversation(tpl, llama3_tokenizer, CONV, max_length=len(full.ids)).truncated


def test_untrained_assistant_turn_and_weight_zero(llama3_tokenizer):
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0},
            {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    ec = encode_conversation(load_template("llama-3"), llama3_tokenizer, msgs)
    assert trained_text(llama3_tokenizer, ec) == ["d<|eot_id|>"]


def test_control_token_in_content_stays_located(llama3_tokenizer):
    msgs = [{"role": "user", "content": "say <|eot_id|> now"}, {"role": "assistant", "content": "ok"}]
    ec = encode_conversation(load_template("llama-3"), llama3_tokenizer, msgs)
    s = ec.span_of(0)
    assert ec.text[s.content_start:s.content_end] == "say <|eot_id|> now"
    assert 128009 in ec.ids[s.token_start:s.token_end]      # it became the real control token
    assert trained_text(llama3_tokenizer, ec) == ["ok<|eot_id|>"]


@dataclass(frozen=True)
class _Meta:
    name: str = "peek"
    end_of_turn: tuple = ("</turn>",)
    has_generation_markers: bool = False


class _PeekTemplate:
    """A template that looks inside content (uppercases a message that starts with '!'), so the sentinel
    skeleton does not reproduce it and the prefix renders must."""

    source = ("{% for m in messages %}<{{ m.role }}>{% if m.content.startswith('!') %}{{ m.content | upper }}"
              "{% else %}{{ m.content }}{% endif %}</turn>\n{% endfor %}"
              "{% if add_generation_prompt %}<assistant>{% endif %}")
    meta = _Meta()

    def __init__(self):
        self.r = HFRenderer(self.source)

    def render(self, messages, *, add_generation_prompt=False, tools=None, **extra):
        return self.r.render(messages, add_generation_prompt=add_generation_prompt, tools=tools, **extra)


def test_content_dependent_template_falls_back_to_prefix_renders(llama3_tokenizer):
    msgs = [{"role": "user", "content": "!shout"}, {"role": "assistant", "content": "quiet reply"}]
    ec = encode_conversation(_PeekTemplate(), llama3_tokenizer, msgs)
    u, a = ec.spans
    assert u.content_start is None and u.turn_start == 0       # rewritten: not recoverable, but its turn is known
    assert a.method == "prefix" and ec.text[a.content_start:a.content_end] == "quiet reply"
    assert a.eot_string == "</turn>" and not a.eot_single      # "</turn>" is several ordinary tokens
    # the last piece of "</turn>" merges with the template's "\n": one token crossing the end of the turn
    j = a.eot_index
    assert ec.tokens[j] == ">Ċ" and ec.offsets[j][1] > a.eot_char[1]
    assert "".join(trained_text(llama3_tokenizer, ec)) == "quiet reply</turn>\n"


def test_batch_matches_single_and_returns_errors(llama3_tokenizer):
    tpl = load_template("llama-3")
    rows = [CONV, CONV[1:3], [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]]
    many = encode_conversations(tpl, llama3_tokenizer, rows)
    for r, ec in zip(rows, many):
        one = encode_conversation(tpl, llama3_tokenizer, r)
        assert ec.ids == one.ids and ec.labels == one.labels
    peek = _PeekTemplate()
    good = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    broken = [{"role": "user"}]                     # m.content.startswith on an undefined content raises
    out = encode_conversations(peek, llama3_tokenizer, [good, broken, good], errors="return")
    assert isinstance(out[1], TemplateRenderError)
    assert out[0].ids == out[2].ids == encode_conversation(peek, llama3_tokenizer, good).ids
    with pytest.raises(TemplateRenderError):
        encode_conversations(peek, llama3_tokenizer, [good, broken])
    no_assistant = encode_conversation(tpl, llama3_tokenizer, [{"role": "user", "content": "x"}])
    assert no_assistant.n_trained == 0 and all(x == IGNORE_INDEX for x in no_assistant.labels)
