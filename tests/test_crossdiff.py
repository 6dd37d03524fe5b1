"""Pure pieces of the cross diff: segment alignment, whitespace visibility, message transformations."""

from __future__ import annotations

from tmplcheck.validator import crossdiff as cd


def ops(a, b):
    return [(o.kind, a[o.a0:o.a1], b[o.b0:o.b1]) for o in cd.diff_ops(a, b)]


def test_equal_texts_have_no_ops():
    assert cd.diff_ops("same", "same") == [] and cd.cost("x", "x") == 0 and cd.distance("x", "x") == (0, 0)


def test_tekken_spaces_are_two_insertions_and_bos_a_deletion():
    assert ops("<s>[INST]Hello[/INST]Hi</s>", "[INST] Hello[/INST] Hi</s>") == [
        ("template_only", "<s>", ""), ("llama_only", "", " "), ("llama_only", "", " ")]


def test_a_token_is_never_split():
    assert ops("x<｜end▁of▁sentence｜>y", "x<｜end▁of▁s｜>y") == [
        ("replace", "<｜end▁of▁sentence｜>", "<｜end▁of▁s｜>")]


def test_whitespace_does_not_anchor_and_insertions_start_at_a_token():
    a = "<|im_start|>system\nDefault<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
    b = "<|im_start|>user\nhi<|im_end|>\n"
    assert ops(a, b) == [("template_only", "<|im_start|>system\nDefault<|im_end|>\n", "")]
    a = "[SYSTEM_PROMPT]You are a bot. Be kind.[/SYSTEM_PROMPT][INST]What is it?[/INST]"
    b = "[INST] What is it?[/INST]"
    assert ops(a, b) == [("template_only", "[SYSTEM_PROMPT]You are a bot. Be kind.[/SYSTEM_PROMPT]", ""),
                         ("llama_only", "", " ")]


def test_think_block_is_one_insertion():
    assert ops("assistant\n<think>\n\n</think>\n\nParis.<|im_end|>", "assistant\nParis.<|im_end|>") == [
        ("template_only", "<think>\n\n</think>\n\n", "")]


def test_visible_and_snippet():
    assert cd.visible("a\nb\tc\u00a0d\x00") == "a\\nb\\tc\\xa0d\\x00"
    s = cd.snippet("hello<|eot_id|>world", 5, 15, context=3)
    assert s == "…llo⟦<|eot_id|>⟧wor…"
    assert cd.snippet("ab", 1, 1) == "a⟦⟧b"


def test_c_strip_keeps_unicode_spaces():
    assert cd.c_strip(" \t\nx\u00a0\v\f\r") == "x\u00a0"
    pairs = (("user", " a "), ("assistant", "b\u00a0"))
    assert cd.trim_roles(pairs, {"user"}) == ((("user", "a"), ("assistant", "b\u00a0")), [0])
    assert cd.trim_roles(pairs, {"assistant"}, unicode=True) == ((("user", " a "), ("assistant", "b")), [1])


def test_system_transformations():
    pairs = (("system", " S "), ("user", "u1"), ("assistant", "a"), ("user", "u2"))
    assert cd.fold_system(pairs, into="first", sep="\n\n", trim=True) == (
        ("user", "S\n\nu1"), ("assistant", "a"), ("user", "u2"))
    assert cd.fold_system(pairs, into="last", sep="\n\n")[-1] == ("user", " S \n\nu2")
    assert cd.drop_system(pairs) == pairs[1:]
    assert cd.append_to_system(pairs, "\n\n")[0] == ("system", " S \n\n")
    assert cd.fold_system(pairs[1:], into="first", sep="") is None


def test_nul_cut_and_spans():
    pairs, changed = cd.cut_at_nul((("user", "ab\x00cd"), ("assistant", "ok")))
    assert pairs == (("user", "ab"), ("assistant", "ok")) and changed == [0]
    text = "U: ab\nA: ok\n"
    spans = cd.content_spans(text, pairs)
    assert spans == [(0, 3, 5), (1, 9, 11)]
    assert cd.message_at(spans, 4) == 0 and cd.message_at(spans, 6) == 0 and cd.message_at(spans, 0) == 0
    assert cd.first_turn_start(spans, pairs) == 3


def test_one_sided_tokens():
    assert cd.one_sided_prefix("<s>[INST]", "[INST]", ["<s>"]) == ("template", "<s>")
    assert cd.one_sided_prefix("<s>x", "<s>x", ["<s>"]) is None
    assert cd.one_sided_suffix("a<|end|>\n<|endoftext|>", "a<|end|>\n", ["<|endoftext|>"]) == \
        ("template", "<|endoftext|>")
    # a different end-of-turn token is not an extra one
    assert cd.one_sided_suffix("Paris.<EOS>", "Paris.</s>", ["<EOS>"]) is None


def test_template_literals_only():
    src = "{{ '<think>\\n\\n</think>\\n\\n' }}"
    assert cd.template_literals_only("<think>\n\n</think>\n\n", src)
    assert not cd.template_literals_only("\n\n", src) and not cd.template_literals_only("<|eot_id|>", src)
