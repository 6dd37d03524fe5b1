"""The registry: every built-in byte-equal to its upstream template (or the format's published example) on a
conversation matrix, training variants equal to their templates, and every way of loading a template."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from tmplcheck.assets import upstream_templates_dir
from tmplcheck.templates import Template, TemplateMeta, builtin, load_template, registry
from tmplcheck.validator.render import TemplateLoadError, TemplateRenderError

UP = upstream_templates_dir()
REQUIRED = {"llama-3", "llama-3.1", "chatml", "qwen2.5", "mistral-v1", "mistral-v3", "mistral-v7", "gemma", "phi-3",
            "zephyr", "vicuna", "alpaca"}

S = {"role": "system", "content": "You are terse. "}
U1 = {"role": "user", "content": " What is 2+2?\n"}
A1 = {"role": "assistant", "content": "4 "}
U2 = {"role": "user", "content": "And 3+3?"}
A2 = {"role": "assistant", "content": " 6"}
MATRIX = {
    "user": [U1], "system-user": [S, U1], "user-assistant": [U1, A1], "system-user-assistant": [S, U1, A1],
    "multi": [U1, A1, U2, A2], "system-multi": [S, U1, A1, U2, A2], "multi-open": [U1, A1, U2],
    "system-multi-open": [S, U1, A1, U2],
}


def outcome(t: Template, msgs, agp, **kw):
    try:
        return t.render(msgs, add_generation_prompt=agp, **kw)
    except TemplateRenderError as e:
        return ("raises", e.message)


def upstream(name: str, meta_of: str) -> Template:
    m = registry()[meta_of]
    return Template(TemplateMeta(name=name, bos_token=m.bos_token, eos_token=m.eos_token),
                    (UP / f"{name}.jinja").read_text())


def test_registry_has_the_required_builtins():
    reg = registry()
    assert REQUIRED <= set(reg)
    for name in ("llama-3", "llama-3.1", "chatml", "qwen2.5"):
        assert reg[name].has_generation_markers
    for n, m in reg.items():
        assert m.builtin and m.end_of_turn and m.name == n
        rendered = "".join(o for c in MATRIX.values() for agp in (False, True)
                           if isinstance(o := outcome(builtin(n), c, agp), str))
        assert [t for t in m.special_tokens if t not in rendered] == [], n
        assert m.generation_prompt == "" or m.generation_prompt in rendered
        if m.upstream:
            assert (UP / f"{m.upstream}.jinja").is_file(), m.upstream
    assert registry()["gemma"].system_role is False


# ------------------------------------------------------------------------------------- byte-equal to upstream
EXACT = [("llama-3.1", "meta-llama-Llama-3.1-8B-Instruct"), ("llama-3.1", "meta-llama-Llama-3.3-70B-Instruct"),
         ("qwen2.5", "Qwen-Qwen2.5-7B-Instruct"), ("gemma", "google-gemma-2-2b-it"),
         ("phi-3", "microsoft-Phi-3.5-mini-instruct")]


@pytest.mark.parametrize("ours,theirs", EXACT)
@pytest.mark.parametrize("case", list(MATRIX))
@pytest.mark.parametrize("agp", [False, True])
def test_builtin_equals_upstream(ours, theirs, case, agp):
    msgs = MATRIX[case]
    assert outcome(builtin(ours), msgs, agp) == outcome(upstream(theirs, ours), msgs, agp)


@pytest.mark.parametrize("case", list(MATRIX))
@pytest.mark.parametrize("agp", [False, True])
def test_llama31_equals_llama32_with_pinned_date(case, agp):
    # Llama 3.2 prints strftime_now("%d %b %Y"); pinned to 26 Jul 2024 it is Llama 3.1's fixed date
    now = datetime(2024, 7, 26)
    theirs = upstream("meta-llama-Llama-3.2-3B-Instruct", "llama-3.1").pinned(now)
    assert outcome(builtin("llama-3.1"), MATRIX[case], agp) == outcome(theirs, MATRIX[case], agp)
    assert outcome(builtin("llama-3.1"), MATRIX[case], agp, date_string="01 Jan 2025") == \
        outcome(theirs.pinned(datetime(2025, 1, 1)), MATRIX[case], agp)


@pytest.mark.parametrize("case", [c for c in MATRIX if c.startswith("system")])
@pytest.mark.parametrize("agp", [False, True])
def test_chatml_equals_qwen25_when_a_system_message_is_given(case, agp):
    assert outcome(builtin("chatml"), MATRIX[case], agp) == outcome(upstream("Qwen-Qwen2.5-7B-Instruct", "chatml"),
                                                                   MATRIX[case], agp)


@pytest.mark.parametrize("case", list(MATRIX))
@pytest.mark.parametrize("agp", [False, True])
def test_mistral_v3_tekken_equals_nemo(case, agp):
    """Equal wherever Nemo keeps the system message. Nemo puts it in front of the last message only when that
    message is a user turn, so for rows ending with an answer (every training row) it drops it; our built-in puts
    it in front of the last user turn instead (T004 flags Nemo's behaviour: test_template_checks)."""
    msgs = MATRIX[case]
    ours, theirs = outcome(builtin("mistral-v3-tekken"), msgs, agp), \
        outcome(upstream("mistralai-Mistral-Nemo-Instruct-2407", "mistral-v3-tekken"), msgs, agp)
    if msgs[0]["role"] == "system" and msgs[-1]["role"] == "assistant":
        assert S["content"] in ours and S["content"] not in theirs
        assert ours.replace(S["content"] + "\n\n", "") == theirs
    else:
        assert ours == theirs


@pytest.mark.parametrize("case", list(MATRIX))
@pytest.mark.parametrize("agp", [False, True])
def test_mistral_v7_equals_mistral_small_32(case, agp):
    """Equal with a system message; without one Mistral's template writes its long default system prompt, which
    our built-in does not: with that prompt given as a system message the outputs are equal again."""
    now = datetime(2025, 6, 20)
    theirs = upstream("Mistral-Small-3.2-24B-Instruct-2506", "mistral-v7").pinned(now)
    msgs = MATRIX[case]
    if msgs[0]["role"] != "system":
        default = theirs.render([{"role": "user", "content": "x"}])
        default = default[default.index("[SYSTEM_PROMPT]") + 15:default.index("[/SYSTEM_PROMPT]")]
        assert "2025-06-20" in default
        msgs = [{"role": "system", "content": default}] + msgs
    assert outcome(builtin("mistral-v7"), msgs, agp) == outcome(theirs, MATRIX[case], agp)


# ---------------------------------------------------------------------------------- published format examples
def test_llama3_published_example():
    # Meta's model card for Meta-Llama-3-8B-Instruct (prompt format section)
    expected = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{{ system_prompt }}<|eot_id|>"
                "<|start_header_id|>user<|end_header_id|>\n\n{{ user_message }}<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n")
    msgs = [{"role": "system", "content": "{{ system_prompt }}"}, {"role": "user", "content": "{{ user_message }}"}]
    assert builtin("llama-3").render(msgs, add_generation_prompt=True) == expected
    multi = builtin("llama-3").render([U1, A1, U2])
    assert multi == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
                     "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>"
                     "<|start_header_id|>user<|end_header_id|>\n\nAnd 3+3?<|eot_id|>")


def test_chatml_published_example():
    msgs = [{"role": "system", "content": "You are ChatGPT."}, {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "Bye"}]
    assert builtin("chatml").render(msgs, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are ChatGPT.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
        "<|im_start|>assistant\nHi!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n")
    assert builtin("chatml").render([{"role": "user", "content": "Hello"}]) == "<|im_start|>user\nHello<|im_end|>\n"


def test_mistral_v1_published_example():
    # Mistral's tokenization guide, v1: "<s> [INST] user [/INST] assistant</s> [INST] ..."
    msgs = [{"role": "user", "content": "What is your favourite condiment?"},
            {"role": "assistant", "content": "Lemon juice."}, {"role": "user", "content": "Mayonnaise recipes?"}]
    assert builtin("mistral-v1").render(msgs) == ("<s> [INST] What is your favourite condiment? [/INST] Lemon juice.</s>"
                                                  " [INST] Mayonnaise recipes? [/INST]")
    assert builtin("mistral-v1").render([S, U2]) == "<s> [INST] You are terse. \n\nAnd 3+3? [/INST]"


def test_mistral_v3_published_example():
    # Mistral-7B-Instruct-v0.3: "<s>[INST] user[/INST] answer</s>[INST] system\n\nlast user[/INST]"
    msgs = [S, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": " Hello! "},
            {"role": "user", "content": "Bye"}]
    assert builtin("mistral-v3").render(msgs) == ("<s>[INST] Hi[/INST] Hello!</s>[INST] You are terse. \n\nBye[/INST]")
    with pytest.raises(TemplateRenderError, match="alternate"):
        builtin("mistral-v3").render([U1, U2])


def test_zephyr_published_example():
    # HuggingFaceH4/zephyr-7b-beta model card
    msgs = [{"role": "system", "content": "You are a friendly chatbot who always responds in the style of a pirate"},
            {"role": "user", "content": "How many helicopters can a human eat in one sitting?"}]
    assert builtin("zephyr").render(msgs, add_generation_prompt=True) == (
        "<|system|>\nYou are a friendly chatbot who always responds in the style of a pirate</s>\n"
        "<|user|>\nHow many helicopters can a human eat in one sitting?</s>\n<|assistant|>\n")


def test_vicuna_published_example():
    # FastChat conversation template "vicuna_v1.1" (sep " ", sep2 "</s>")
    msgs = [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi there."},
            {"role": "user", "content": "How are you?"}]
    assert builtin("vicuna").render(msgs, add_generation_prompt=True) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: Hello! ASSISTANT: Hi there.</s>"
        "USER: How are you? ASSISTANT:")


def test_alpaca_published_example():
    # alpaca-lora templates/alpaca.json, prompt_no_input
    got = builtin("alpaca").render([{"role": "user", "content": "Tell me about alpacas."}], add_generation_prompt=True)
    assert got == ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                   "request.\n\n### Instruction:\nTell me about alpacas.\n\n### Response:\n")
    full = builtin("alpaca").render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    assert full.endswith("### Response:\nHello</s>\n\n")


# ----------------------------------------------------------------------------------------- training variants
@pytest.mark.parametrize("name", [n for n, m in registry().items() if m.has_generation_markers])
@pytest.mark.parametrize("case", list(MATRIX))
@pytest.mark.parametrize("agp", [False, True])
def test_training_variant_renders_like_the_template(name, case, agp):
    t = builtin(name)
    try:
        text, spans = t.render_with_mask(MATRIX[case], add_generation_prompt=agp)
    except TemplateRenderError as e:
        assert outcome(t, MATRIX[case], agp) == ("raises", e.message)
        return
    assert text == t.render(MATRIX[case], add_generation_prompt=agp)
    answers = [m for m in MATRIX[case] if m["role"] == "assistant"]
    assert len(spans) == len(answers)
    for (a, b), m in zip(spans, answers):
        piece = text[a:b]   # the content, after the reasoning or channel header the turn generates first (qwen3, gpt-oss)
        assert m["content"].strip() in piece
        assert any(piece.endswith(e) for e in t.meta.end_of_turn), piece


def test_render_with_mask_without_markers_raises():
    with pytest.raises(TemplateRenderError) as e:
        builtin("zephyr").render_with_mask([U1, A1])
    assert e.value.kind == "no-markers"


# ----------------------------------------------------------------------------------------------------- loading
def test_load_registry_name_and_file(tmp_path):
    assert load_template("llama-3").meta.builtin
    p = tmp_path / "mine.jinja"
    p.write_text(builtin("llama-3").source)
    t = load_template(str(p))
    assert t.meta.name == "mine" and t.meta.same_as == "llama-3" and t.meta.bos_token == "<|begin_of_text|>"
    assert t.meta.end_of_turn == ("<|eot_id|>",)


def test_load_upstream_files_are_identified():
    for ours, theirs in EXACT:
        t = load_template(str(UP / f"{theirs}.jinja"))
        assert t.meta.same_as == ours, theirs


def test_load_model_dir_chat_template_jinja(tmp_path):
    (tmp_path / "chat_template.jinja").write_text(builtin("chatml").source)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>", "bos_token": None}))
    t = load_template(str(tmp_path))
    assert t.meta.same_as == "chatml" and t.meta.eos_token == "<|im_end|>"


def test_load_tokenizer_config_string_and_named_list(tmp_path):
    src = (UP / "meta-llama-Llama-3.1-8B-Instruct.jinja").read_text()
    cfg = {"bos_token": {"content": "<|begin_of_text|>", "special": True}, "eos_token": "<|eot_id|>",
           "chat_template": [{"name": "default", "template": src},
                             {"name": "tool_use", "template": "{{ bos_token }}TOOLS"}]}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    t = load_template(str(tmp_path))
    assert t.meta.same_as == "llama-3.1" and t.meta.bos_token == "<|begin_of_text|>"
    named = load_template(f"{tmp_path / 'tokenizer_config.json'}::tool_use")
    assert named.render([]) == "<|begin_of_text|>TOOLS"
    with pytest.raises(TemplateLoadError, match="no chat template named 'nope'"):
        load_template(f"{tmp_path}::nope")


def test_load_dir_without_template_fails(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(TemplateLoadError):
        load_template(str(tmp_path))
    with pytest.raises(TemplateLoadError, match="not a built-in"):
        load_template(str(tmp_path / "missing.jinja"))


def _write_gguf(path: Path, template: str | None, named: dict[str, str] | None = None):
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "<s>", "</s>", "hello"])
    w.add_token_scores([0.0, 0.0, 0.0, -1.0])
    w.add_token_types([2, 3, 3, 1])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    if template is not None:
        w.add_chat_template(template)
    for k, v in (named or {}).items():
        w.add_string(f"tokenizer.chat_template.{k}", v)
    w.add_tensor("x", np.zeros(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_load_gguf(tmp_path):
    p = tmp_path / "tiny.gguf"
    _write_gguf(p, builtin("mistral-v3").source, {"rag": "RAG {{ eos_token }}"})
    t = load_template(str(p))
    assert t.meta.same_as == "mistral-v3" and (t.meta.bos_token, t.meta.eos_token) == ("<s>", "</s>")
    assert load_template(f"{p}::rag").render([]) == "RAG </s>"
    empty = tmp_path / "none.gguf"
    _write_gguf(empty, None)
    with pytest.raises(TemplateLoadError, match="tokenizer.chat_template"):
        load_template(str(empty))


def test_load_hub_id_offline_from_cache(tmp_path, monkeypatch):
    """The real hub path (huggingface_hub.hf_hub_download) with HF_HUB_OFFLINE and a cache laid out as the hub
    library writes it; nothing leaves the machine."""
    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny-chat"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (snap / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": (UP / "google-gemma-2-2b-it.jinja").read_text(), "bos_token": "<bos>", "eos_token": "<eos>"}))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    t = load_template("acme/tiny-chat")
    assert t.meta.same_as == "gemma" and t.meta.origin == "hub:acme/tiny-chat"
    with pytest.raises(TemplateLoadError, match="offline"):
        load_template("acme/not-cached")
