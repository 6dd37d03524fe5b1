"""The cross check on the real upstream templates of the llama-cpp-python sdist: every template either renders and
its llama.cpp comparison is fully classified, or is listed here with the reason it is not."""

from __future__ import annotations

import re
from datetime import datetime

import pytest

from tmplcheck.assets import ensure_sdist, upstream_templates_dir
from tmplcheck.validator.ingest import Conversation, Message
from tmplcheck.validator.crosscheck import CrossSummary, check_cross
from tmplcheck.validator.llamacpp import detect

# bos/eos token text of each model family (the templates read them as variables)
TOKENS = [(r"Llama-3|llama-3|functionary|Hermes", "<|begin_of_text|>", "<|eot_id|>"),
          (r"deepseek|DeepSeek", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
          (r"gemma", "<bos>", "<eos>"), (r"Phi-3", "<s>", "<|endoftext|>"),
          (r"Qwen|QwQ|SmolLM|Bielik|MiMo|LFM|Nemotron|MiniCPM|StepFun", None, "<|im_end|>"),
          (r"Cohere|command-r", "<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>"),
          (r"granite", "<|end_of_text|>", "<|end_of_text|>"), (r"gpt-oss", "<|startoftext|>", "<|return|>")]

SIMPLE = [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}]
SYSTEM = [{"role": "system", "content": "You are a helpful assistant."}] + SIMPLE
MULTI = SYSTEM + [{"role": "user", "content": "And Germany? "}, {"role": "assistant", "content": "Berlin.\n"}]
CONVS = {"simple": SIMPLE, "system": SYSTEM, "multi": MULTI}

#: Templates our HF renderer cannot render for plain conversations, and why (the template's own requirement).
HF_REFUSES = {
    "CohereForAI-c4ai-command-r-plus-tool_use": "the tool_use variant iterates `tools`, which must be given",
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use": "the tool_use variant iterates `tools`, which must be given",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": "the tool_use variant iterates `tools`, which must be given",
    "fireworks-ai-llama-3-firefunction-v2": "the template needs a `functions` variable",
}
#: Templates whose training text differs from llama.cpp's built-in in ways that are real format differences
#: (an error in a dataset check, correctly): the reason, from comparing the two texts by hand.
KNOWN_UNEXPLAINED = {
    "GLM-4.7-Flash": "the template writes no newline after <|user|>/<|system|>, llama.cpp's chatglm4 does",
    "inclusionai-ling-3.0-flash": "the template says 'detailed thinking on', llama.cpp's bailing2 'off'",
    "openai-gpt-oss-120b": "llama.cpp's gpt-oss built-in is a bare Harmony skeleton: the system text becomes a "
                           "developer message in the template",
    "unsloth-Apriel-1.5": "the template writes a newline before every <|end|>, llama.cpp's phi3 does not",
    "Cohere2MoE": "the template wraps content in <|START_TEXT|>...<|END_TEXT|> and keeps edge spaces inside",
}
#: Families the notes describe, with the exact explained codes each conversation must get.
EXPLAINED = {
    "meta-llama-Llama-3.1-8B-Instruct": {"simple": {"X001", "X006"}, "system": {"X001", "X006"},
                                         "multi": {"X001", "X006"}},  # the template trims content itself
    "meta-llama-Llama-3.3-70B-Instruct": {"simple": {"X001", "X006"}, "system": {"X001", "X006"}},
    "Qwen-Qwen2.5-7B-Instruct": {"simple": {"X006"}, "system": set(), "multi": set()},
    "Qwen-Qwen3-0.6B": {"simple": {"X007"}, "system": {"X007"}},
    "google-gemma-2-2b-it": {"simple": {"X001"}},
    "Mistral-Small-3.2-24B-Instruct-2506": {"system": {"X001", "X007"}, "multi": {"X001", "X007"},
                                            "simple": {"X001", "X006", "X007"}},
    "unsloth-mistral-Devstral-Small-2507": {"system": {"X001", "X007"}},
    "mistralai-Mistral-Nemo-Instruct-2407": {"simple": {"X001"}, "system": {"X001", "X005"}},
    "microsoft-Phi-3.5-mini-instruct": {"simple": {"X002"}, "system": {"X002"}, "multi": {"X002"}},
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": {"simple": {"X001"}, "system": {"X001", "X004"}},
    "llama-cpp-rwkv-world": {"simple": {"X001"}, "multi": {"X001"}},
    "ibm-granite-granite-3.3-2B-Instruct": {"simple": {"X006"}, "system": set()},
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use": {"multi": {"X001", "X003", "X006", "X007"}},
    "Bielik-11B-v3.0-Instruct": {"simple": set(), "system": set(), "multi": set()},
}


def tokens(stem: str) -> tuple[str | None, str]:
    for pat, b, e in TOKENS:
        if re.search(pat, stem):
            return b, e
    return "<s>", "</s>"


def conv(messages) -> Conversation:
    return Conversation("row.jsonl", 1, "openai",
                        [Message(m["role"], m["content"], f"/messages/{i}/content") for i, m in enumerate(messages)],
                        "/messages")


def load(stem: str):
    from tmplcheck.templates import Template, TemplateMeta

    bos, eos = tokens(stem)
    src = (upstream_templates_dir() / f"{stem}.jinja").read_text(encoding="utf-8")
    return Template(TemplateMeta(name=stem, bos_token=bos, eos_token=eos), src, now=datetime(2024, 7, 26))


ensure_sdist()
STEMS = sorted(p.stem for p in upstream_templates_dir().glob("*.jinja"))


@pytest.fixture(scope="module")
def outcomes() -> dict[str, dict[str, object]]:
    """stem -> conversation name -> set of codes (or the HF exception text)."""
    out: dict[str, dict[str, object]] = {}
    for stem in STEMS:
        t = load(stem)
        row: dict[str, object] = {}
        for name, msgs in CONVS.items():
            try:
                hf = t.render(msgs)
            except Exception as e:  # noqa: BLE001 - the template refuses this conversation
                row[name] = f"refused: {e}"
                continue
            row[name] = {f.code for f in check_cross(conv(msgs), t, hf)}
        out[stem] = row
    return out


def test_every_upstream_template_is_classified_or_listed(outcomes):
    for stem, row in outcomes.items():
        if detect(load(stem).source) is None:
            assert all(v == {"X010"} or str(v).startswith("refused") for v in row.values()), (stem, row)
            continue
        rendered = {k: v for k, v in row.items() if isinstance(v, set)}
        if not rendered:
            assert stem in HF_REFUSES, (stem, row)
            continue
        assert stem not in HF_REFUSES, stem
        unexplained = any("X011" in v for v in rendered.values())
        assert unexplained == (stem in KNOWN_UNEXPLAINED), (stem, row)


def test_families_from_the_notes_are_explained_exactly(outcomes):
    for stem, per_conv in EXPLAINED.items():
        for name, codes in per_conv.items():
            assert outcomes[stem][name] == codes, (stem, name, outcomes[stem][name])


def test_gemma_system_is_refused_by_the_template_itself(outcomes):
    assert "System role not supported" in outcomes["google-gemma-2-2b-it"]["system"]


def test_the_chatml_family_needs_no_error(outcomes):
    chatml = [s for s in STEMS if detect(load(s).source) == "chatml"]
    assert len(chatml) == 16
    for stem in chatml:
        for name, v in outcomes[stem].items():
            assert isinstance(v, str) or "X011" not in v, (stem, name, v)


def test_summary_over_an_upstream_template():
    t = load("meta-llama-Llama-3.1-8B-Instruct")
    s = CrossSummary()
    for msgs in (SIMPLE, SYSTEM, MULTI):
        s.add(list(check_cross(conv(msgs), t, t.render(msgs))))
    d = s.as_dict()
    assert (d["rows"], d["explained"], d["unexplained"], d["format"]) == (3, 3, 0, "llama3")
    assert d["by_code"] == {"X001": 3, "X006": 3}
    assert "preamble" in d["headline"] and "0 of 3 rows render identically" in d["headline"]


_SHAPE_CHECKS: dict = {}


@pytest.mark.parametrize("stem", [s for s in STEMS if s not in HF_REFUSES])
def test_shape_cache_equals_the_row_comparison(stem):
    """``ShapeCrossCheck`` (one comparison per conversation shape) gives each row exactly what ``check_cross`` gives
    it, on every upstream template, for clean rows (where the shape's result is reused) and rows with edge
    whitespace, empty content or odd role orders (compared on their own)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tmplcheck.validator import strategies as S
    from tmplcheck.validator.crosscheck import ShapeCrossCheck

    t = load(stem)
    shapes = ShapeCrossCheck()

    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.one_of(S.valid_conversations(clean=True, max_pairs=2), S.valid_conversations(edges=True, max_pairs=2),
                     st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool"]),
                                                     "content": S.content(long=False)}), max_size=4)))
    def check(msgs):
        try:
            hf = t.render(msgs)
        except Exception:  # noqa: BLE001 - the template refuses this conversation: no comparison either way
            return
        c = conv(msgs)
        assert shapes(c, t, hf) == list(check_cross(c, t, hf))

    check()
    for msgs in CONVS.values():   # the shapes of the fixed conversations, twice: the second is served by the cache
        for _ in range(2):
            try:
                hf = t.render(msgs)
            except Exception:  # noqa: BLE001
                break
            c = conv(msgs)
            assert shapes(c, t, hf) == list(check_cross(c, t, hf))
