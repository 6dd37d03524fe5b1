"""The llama.cpp renderer against the real llama-cpp-python: built-ins, buffer regrowth, -1, NUL, detection."""

from __future__ import annotations

import pytest

from tmplcheck.assets import ensure_sdist, upstream_templates_dir
from tmplcheck.validator import llamacpp as L
from tmplcheck.validator.llamacpp import LlamaCppRenderer, UnsupportedTemplate, builtin_templates, detect

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."}]


def test_builtin_names_are_the_54_byte_sorted():
    names = builtin_templates()
    assert len(names) == 54
    assert names == sorted(names, key=lambda s: s.encode())
    assert {"chatml", "llama3", "gemma", "mistral-v7-tekken", "phi3", "gpt-oss"} <= set(names)
    assert "dots1" not in names  # detectable, but llama.cpp has no name for it


def test_chatml_exact_text():
    r = LlamaCppRenderer("chatml")
    assert r.builtin == "chatml"
    assert r.render(CONV, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>assistant\n")
    assert r.render(CONV).endswith("Hello.<|im_end|>\n")


def test_llama3_trims_and_writes_no_bos():
    out = LlamaCppRenderer("llama3").render([{"role": "user", "content": "  Hi\n\n"}])
    assert out == "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"


def test_buffer_regrowth_on_a_long_conversation():
    msgs = [{"role": ("user", "assistant")[i % 2], "content": f"message {i} " + "é" * (i % 50)} for i in range(3000)]
    expected = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs)
    small = LlamaCppRenderer("chatml", initial_buffer=64)
    d = small.render_detailed(msgs)
    assert d.text == expected and d.regrowths == 1 and small.regrowths == 1
    assert len(expected.encode()) > 100_000
    # the default estimate is smaller than headers-heavy output: it must regrow rather than truncate
    headers = [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}] * 500
    r = LlamaCppRenderer("command-r")
    d = r.render_detailed(headers)
    assert d.regrowths >= 1
    assert d.text == ("<|START_OF_TURN_TOKEN|><|USER_TOKEN|><|END_OF_TURN_TOKEN|>"
                      "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|><|END_OF_TURN_TOKEN|>") * 500


def test_result_exactly_the_buffer_size_needs_no_regrowth():
    text = LlamaCppRenderer("chatml").render(CONV)
    r = LlamaCppRenderer("chatml", initial_buffer=len(text.encode()))
    d = r.render_detailed(CONV)
    assert d.text == text and d.regrowths == 0


def test_unknown_template_is_unsupported_not_a_crash():
    src = "{% for m in messages %}<<{{ m.role }}>> {{ m.content }}{% endfor %}"
    assert detect(src) is None
    r = LlamaCppRenderer(src)
    assert r.builtin is None and not r.supported
    with pytest.raises(UnsupportedTemplate):
        r.render(CONV)
    assert detect("chatml ") is None  # not a key, and no heuristic matches


def test_nul_cuts_content_and_is_reported():
    d = LlamaCppRenderer("chatml").render_detailed([{"role": "user", "content": "abc\x00def"},
                                                    {"role": "assistant", "content": "ok"}])
    assert d.text == "<|im_start|>user\nabc<|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n"
    assert d.truncated == (0,)


def test_typed_content_parts_are_joined_and_tools_ignored():
    msgs = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text",
                                                                                          "text": "b"}]}]
    assert LlamaCppRenderer("chatml").render(msgs, tools=[{"type": "function"}]) == "<|im_start|>user\nab<|im_end|>\n"


def test_unnamed_dots1_is_reachable():
    r = LlamaCppRenderer("dots1")
    assert r.render([{"role": "user", "content": "q"}], add_generation_prompt=True) == \
        "<|userprompt|>q<|endofuserprompt|><|response|>"
    assert detect("... <|endofuserprompt|> ...") == "dots1"


def test_a_name_starting_with_mistral_is_llama2():
    assert detect("mistral-foo") == "llama2"


# ---------------------------------------------------------------------------------------------- detection mapping
# LLAMA_CPP_NOTES.md §3: what llama.cpp detects for each of the sdist's upstream templates (18 are unknown: -1).
UNKNOWN = {"Apertus-8B-Instruct", "Apriel-1.6-15b-Thinker-fixed", "GigaChat3-10B-A1.8B", "GigaChat3.1-10B-A1.8B",
           "Kimi-K3", "MiniMax-M1", "MiniMax-M2", "MiniMax-M3", "NVIDIA-Nemotron-Nano-v2", "Reka-Edge", "Spark2.5",
           "google-gemma-4-31B-it", "google-gemma-4-31B-it-interleaved", "muse-glimmer", "poolside-Laguna-S-2.1",
           "poolside-Laguna-XS-2.1", "poolside-Laguna-XS.2", "tencent-Hy3"}
DETECTED = {
    "Bielik-11B-v3.0-Instruct": "chatml", "ByteDance-Seed-OSS": "seed_oss", "Cohere2MoE": "command-r",
    "CohereForAI-c4ai-command-r-plus-tool_use": "command-r",
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use": "command-r", "GLM-4.6": "chatglm4",
    "GLM-4.7-Flash": "chatglm4", "HuggingFaceTB-SmolLM3-3B": "chatml", "Kimi-K2-Instruct": "kimi-k2",
    "Kimi-K2-Thinking": "kimi-k2", "LFM2-8B-A1B": "chatml", "LFM2.5-8B-A1B": "chatml", "LFM2.5-Instruct": "chatml",
    "MiMo-VL": "chatml", "Mistral-Small-3.2-24B-Instruct-2506": "mistral-v7",
    "NVIDIA-Nemotron-3-Nano-30B-A3B-BF16": "chatml", "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use": "chatml",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": "chatml", "Qwen-QwQ-32B": "chatml",
    "Qwen-Qwen2.5-7B-Instruct": "chatml", "Qwen-Qwen3-0.6B": "chatml", "Qwen3-Coder": "chatml",
    "Qwen3.5-4B": "chatml", "StepFun3.5-Flash": "chatml", "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": "deepseek3",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": "deepseek3", "deepseek-ai-DeepSeek-V3.1": "deepseek3",
    "deepseek-ai-DeepSeek-V3.2": "deepseek3", "deepseek-ai-DeepSeek-V4-Flash-0731": "deepseek3",
    "deepseek-ai-DeepSeek-V4": "deepseek3", "fireworks-ai-llama-3-firefunction-v2": "llama3",
    "google-gemma-2-2b-it": "gemma", "ibm-granite-granite-3.3-2B-Instruct": "granite",
    "ibm-granite-granite-4.0": "granite-4.0", "ibm-granite-granite-4.1": "granite-4.1",
    "inclusionai-ling-3.0-flash": "bailing2", "llama-cpp-deepseek-r1": "deepseek3",
    "llama-cpp-rwkv-world": "rwkv-world", "meetkai-functionary-medium-v3.1": "llama3",
    "meetkai-functionary-medium-v3.2": "llama3", "meta-llama-Llama-3.1-8B-Instruct": "llama3",
    "meta-llama-Llama-3.2-3B-Instruct": "llama3", "meta-llama-Llama-3.3-70B-Instruct": "llama3",
    "microsoft-Phi-3.5-mini-instruct": "phi3", "mistralai-Ministral-3-14B-Reasoning-2512": "mistral-v7",
    "mistralai-Mistral-Nemo-Instruct-2407": "mistral-v3-tekken", "moonshotai-Kimi-K2": "kimi-k2",
    "openai-gpt-oss-120b": "gpt-oss", "openbmb-MiniCPM5-1B": "chatml", "unsloth-Apriel-1.5": "phi3",
    "unsloth-mistral-Devstral-Small-2507": "mistral-v7", "upstage-Solar-Open-100B": "solar-open",
}


@pytest.fixture(scope="module")
def upstream() -> dict[str, str]:
    ensure_sdist()
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(upstream_templates_dir().glob("*.jinja"))}


def test_detection_of_all_upstream_templates(upstream):
    assert len(upstream) == 70  # the sdist's templates/ folder: 70 templates and a README
    got = {name: detect(src) for name, src in upstream.items()}
    assert {n for n, d in got.items() if d is None} == UNKNOWN
    assert {n: d for n, d in got.items() if d is not None} == DETECTED
    for name, src in upstream.items():  # the answer is llama.cpp's own: -1 exactly where detect says unknown
        r = LlamaCppRenderer(src)
        if name in UNKNOWN:
            with pytest.raises(UnsupportedTemplate):
                r.render(CONV)
        else:
            assert r.render(CONV) == LlamaCppRenderer(DETECTED[name]).render(CONV), name


def test_rule_port_agrees_with_the_library(upstream):
    for name, src in upstream.items():
        assert L.detect_by_rules(src) == detect(src), name


@pytest.mark.parametrize("text,name", [
    ("<|im_start|><|im_sep|>", "phi4"), ("<|im_start|><end_of_utterance>", "smolvlm"),
    ("[INST] [SYSTEM_PROMPT]", "mistral-v7"), ("' [INST] ' + system_message", "mistral-v1"),
    ("[AVAILABLE_TOOLS] \"[INST]\"", "mistral-v3-tekken"), ("[AVAILABLE_TOOLS][INST]", "mistral-v3"),
    ("[INST] content.strip()", "llama2-sys-strip"), ("bos_token + '[INST]", "llama2-sys-bos"),
    ("[INST] <<SYS>>", "llama2-sys"), ("<|assistant|><|user|><|tool_declare|>", "exaone-moe"),
    ("<|assistant|><|user|></s>", "falcon3"), ("<|assistant|><|user|>", "glmedge"),
    ("<|user|><|endoftext|>", "zephyr"), ("bos_token + message['role']", "monarch"),
    ("'\\n\\nAssistant: ' + eos_token", "orion"), ("GPT4 Correct ", "openchat"),
    ("USER: ASSISTANT: SYSTEM: ", "vicuna-orca"), ("### Instruction:<|EOT|>", "deepseek"),
    ("[gMASK]sop", "chatglm3"), ("<用户>", "minicpm"), ("[|system|][|assistant|][|endofturn|][|tool|]", "exaone4"),
    ("<|start_of_role|><tools>g4_default_system_message", "granite-4.0"), ("<|role_start|>", "megrez"),
    (" Ассистент:", "yandex"), ("<|header_start|><|header_end|>", "llama4"), ("<|extra_0|><|extra_4|>", "hunyuan-moe"),
    ("<|im_assistant|>assistant<|im_middle|>", "kimi-k2"), ("[unused9]系统：[unused10]", "pangu-embedded"),
])
def test_each_detection_rule_matches_the_library(text, name):
    assert detect(text) == name
    assert L.detect_by_rules(text) == name


def test_trimmed_roles_measured_from_the_library():
    trims = {b: L.trimmed_roles(b) for b in builtin_templates()}
    every = {"system", "user", "assistant"}
    for b in ("llama3", "llama4", "gemma", "command-r", "exaone3", "exaone4", "exaone-moe", "minicpm", "rwkv-world",
              "llama2-sys-strip"):
        assert trims[b] == every, b
    assert trims["mistral-v3"] == {"assistant"} and trims["seed_oss"] == {"assistant"}
    assert trims["grok-2"] == {"system", "user"}
    assert {b for b, t in trims.items() if t} == {"llama3", "llama4", "gemma", "command-r", "exaone3", "exaone4",
                                                  "exaone-moe", "minicpm", "rwkv-world", "llama2-sys-strip",
                                                  "mistral-v3", "seed_oss", "grok-2"}


def test_alternates_prefer_the_closest_sibling():
    assert L.alternates("mistral-v7")[0] == "mistral-v7-tekken"
    assert "llama2-sys" in L.alternates("llama2") and "chatml" not in L.alternates("llama2")
