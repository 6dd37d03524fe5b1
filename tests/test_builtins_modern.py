"""The built-ins for what people fine-tune today (Llama 3.1/3.2 with tools, Qwen2.5 with tools, Qwen3, Mistral Small
3.2 and Nemo with tool calls, Gemma 3, DeepSeek-R1, GPT-OSS), each proven against its upstream template through
transformers' own ``apply_chat_template`` on conversations with and without tools and reasoning, under the template
arguments it reads; and each ``{% generation %}`` training variant proven to render byte-equal to it, with spans that
hold exactly what each assistant turn generates:

* where the row is prefix-stable at that turn (``P = render(messages[:i], add_generation_prompt=True)`` is a prefix of
  ``F = render(messages[:i+1])``, and ``F`` of the row): ``F[len(P):]`` through its last end-of-turn string, never
  the template text after it (ChatML's ``\\n``) nor what the generation prompt already holds;
* where later turns rewrite this one (``P`` a prefix of the row, ``F`` not: Qwen3 and GPT-OSS drop earlier
  reasoning, GPT-OSS ends earlier answers with ``<|end|>``): what the row holds, from ``len(P)`` through the first
  end-of-turn string;
* where ``P`` is not a prefix of the row at all (DeepSeek-R1's prompt opens ``<think>``; Mistral moves the tool list
  to the last user turn; Qwen3's ``enable_thinking=false`` prompt has an empty think block that earlier turns lack):
  what the row holds after the turn's header (the last header before the turn's end-of-turn string).

Each row is also compared with the pipeline's own regions (``validator.tokens.locate_messages`` ->
``assistant_regions``); the differences found are listed in ``PIPELINE_DIFFERS`` with what is expected and what the
pipeline gives, and checked to be still true.
"""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from tmplcheck.assets import upstream_templates_dir
from tmplcheck.templates import builtin, registry

UP = upstream_templates_dir()
NOW = datetime(2025, 6, 20, 9, 30)

#: built-in -> upstream template file (the llama.cpp sdist's models/templates/, or TRL's original for Gemma 3)
UPSTREAM = {
    "llama-3.1": "meta-llama-Llama-3.1-8B-Instruct", "llama-3.2": "meta-llama-Llama-3.2-3B-Instruct",
    "qwen2.5": "Qwen-Qwen2.5-7B-Instruct", "qwen3": "Qwen-Qwen3-0.6B",
    "mistral-small-3.2": "Mistral-Small-3.2-24B-Instruct-2506", "mistral-nemo": "mistralai-Mistral-Nemo-Instruct-2407",
    "gemma-3": "trl:gemma3", "deepseek-r1": "deepseek-ai-DeepSeek-R1-Distill-Llama-8B", "gpt-oss": "openai-gpt-oss-120b",
}
#: the template arguments each one reads, tried one setting at a time (plus none)
KWARGS = {
    "llama-3.1": [{"date_string": "01 Jan 2025"}, {"tools_in_user_message": False},
                  {"builtin_tools": ["get_weather", "code_interpreter"]}],
    "llama-3.2": [{"date_string": "01 Jan 2025"}, {"tools_in_user_message": False}],
    "qwen3": [{"enable_thinking": True}, {"enable_thinking": False}],
    "gpt-oss": [{"reasoning_effort": "low"}, {"reasoning_effort": "high"}, {"model_identity": "You are Bob."}],
}
#: end-of-turn strings beyond meta.end_of_turn: Llama 3.1 ends a builtin_tools call with <|eom_id|>, which the
#: pipeline takes from the tokenizer's stop ids (Llama 3.1's tokenizer; the built-in llama-3 vocabulary lacks it)
EXTRA_EOTS = {"llama-3.1": ("<|eom_id|>",)}
#: what comes right before an answer in a row (for turns whose inference prompt is not a prefix of the row)
HEADERS = {
    "llama-3.1": ("<|start_header_id|>assistant<|end_header_id|>\n\n",),
    "llama-3.2": ("<|start_header_id|>assistant<|end_header_id|>\n\n",),
    "qwen2.5": ("<|im_start|>assistant\n",), "qwen3": ("<|im_start|>assistant\n",),
    "mistral-small-3.2": ("[/INST]", "[/TOOL_RESULTS]"), "mistral-nemo": ("[/INST]", "[/TOOL_RESULTS]"),
    "gemma-3": ("<start_of_turn>model\n",), "deepseek-r1": ("<｜Assistant｜>", "<｜tool▁outputs▁end｜>"),
    "gpt-oss": ("<|start|>assistant",),
}

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}},
                   "required": ["city"]}}}]
S = {"role": "system", "content": "You are terse."}
U1 = {"role": "user", "content": "What's the weather in Paris?"}
U2 = {"role": "user", "content": "And in Rome?"}
A1 = {"role": "assistant", "content": "Sunny, 18 °C."}
A2 = {"role": "assistant", "content": " Cloudy. "}


def _call(city: str, cid: str, content="") -> dict:
    return {"role": "assistant", "content": content, "tool_calls": [
        {"id": cid, "type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}]}


def _result(cid: str, text: str) -> dict:
    return {"role": "tool", "tool_call_id": cid, "name": "get_weather", "content": text}


def _think(content: str, reasoning: str) -> dict:
    return {"role": "assistant", "content": content, "reasoning_content": reasoning}


CALL1, CALL2 = _call("Paris", "abc123XYZ"), _call("Rome", "def456UVW")
RES1, RES2 = _result("abc123XYZ", '{"temp_c": 18}'), _result("def456UVW", '{"temp_c": 21}')
#: name -> (messages, tools)
CONVERSATIONS = {
    "plain": ([U1, A1], None),
    "plain-system-multi": ([S, U1, A1, U2, A2], None),
    "plain-open": ([S, U1, A1, U2], None),
    "tool": ([U1, CALL1, RES1, A1], TOOLS),
    "tool-system": ([S, U1, CALL1, RES1, A1], TOOLS),
    "tool-multi": ([S, U1, CALL1, RES1, A1, U2, CALL2, RES2, A2], TOOLS),
    "tool-open": ([U1, CALL1, RES1], TOOLS),
    "tool-content-null": ([U1, {**CALL1, "content": None}, RES1, A1], TOOLS),
    "tools-no-call": ([S, U1, A1], TOOLS),
    "reasoning": ([U1, _think("Sunny.", "Look it up.")], None),
    "reasoning-multi": ([S, U1, _think("Sunny.", "Paris: sunny."), U2, _think("Cloudy.", "Rome: cloudy.")], None),
    "reasoning-in-content": ([U1, {"role": "assistant", "content": "<think>\nHmm.\n</think>\n\nSunny."}], None),
    "reasoning-tool": ([U1, {**CALL1, "reasoning_content": "Need the weather."}, RES1,
                        _think("Sunny.", "18 is sunny.")], TOOLS),
}
#: conversations whose spans are not compared, and why (the renders are still compared byte for byte)
NO_SPANS = {
    ("deepseek-r1", "tool-content-null"): "a single tool call gets no end-of-sentence token (upstream's own bug: only "
                                          "a second call writes <｜tool▁calls▁end｜><｜end▁of▁sentence｜>)",
}


# ------------------------------------------------------------------------------------------------ the oracles
def upstream_source(name: str) -> str:
    up = UPSTREAM[name]
    if up.startswith("trl:"):
        import trl

        from pathlib import Path

        return (Path(trl.__file__).parent / "chat_templates" / f"{up[4:]}.jinja").read_text(encoding="utf-8")
    return (UP / f"{up}.jinja").read_text(encoding="utf-8")


@pytest.fixture(autouse=True)
def _pinned_clock(monkeypatch):
    """transformers' strftime_now reads datetime.now(): pin it to NOW, as our built-ins are pinned."""
    import transformers.utils.chat_template_utils as ctu

    class _Pinned(datetime):
        @classmethod
        def now(cls, tz=None):
            return NOW

    monkeypatch.setattr(ctu, "datetime", _Pinned)


_TOKENIZERS: dict = {}


def hf_tokenizer(name: str):
    """A tiny PreTrainedTokenizerFast whose bos/eos are the template's (what apply_chat_template passes)."""
    if name not in _TOKENIZERS:
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        meta = registry()[name]
        special = {k: v for k, v in (("bos_token", meta.bos_token), ("eos_token", meta.eos_token)) if v}
        vocab = {"<unk>": 0, **{t: i + 1 for i, t in enumerate(dict.fromkeys(special.values()))}}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        _TOKENIZERS[name] = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", **special)
    return _TOKENIZERS[name]


def theirs(name: str, source: str, msgs, tools, agp: bool, kw: dict):
    try:
        return hf_tokenizer(name).apply_chat_template(msgs, chat_template=source, tools=tools, tokenize=False,
                                                      add_generation_prompt=agp, **kw)
    except Exception as e:  # noqa: BLE001 - jinja's TemplateError, or what the template's expressions raise
        return ("raises", type(e).__name__)


def ours(name: str, msgs, tools, agp: bool, kw: dict):
    from tmplcheck.validator.render import TemplateRenderError

    try:
        return builtin(name).pinned(NOW).render(msgs, add_generation_prompt=agp, tools=tools, **kw)
    except TemplateRenderError:
        return ("raises", None)


def settings(name: str) -> list[dict]:
    return [{}] + KWARGS.get(name, [])


CASES = [(n, c, json.dumps(kw, sort_keys=True)) for n in UPSTREAM for c in CONVERSATIONS for kw in settings(n)]


def _same(a, b) -> bool:
    if isinstance(a, tuple) or isinstance(b, tuple):
        return isinstance(a, tuple) and isinstance(b, tuple)   # both refuse the conversation
    return a == b


# ----------------------------------------------------------------------------------------- registry entries
def test_the_new_builtins_are_registered():
    reg = registry()
    for name, up in UPSTREAM.items():
        meta = reg[name]
        assert meta.has_generation_markers, name
        assert meta.end_of_turn and meta.builtin, name
        if up.startswith("trl:"):
            assert meta.upstream is None and "trl/chat_templates/gemma3.jinja" in meta.description
        else:
            assert meta.upstream == up
        # the built-in is the upstream text itself: nothing of ours to drift
        assert builtin(name).source == upstream_source(name), name


# ---------------------------------------------------------------------------------- byte-equal to upstream
@pytest.mark.parametrize("name,case,kw", CASES)
def test_builtin_renders_like_upstream_through_transformers(name, case, kw):
    msgs, tools = CONVERSATIONS[case]
    kw = json.loads(kw)
    src = upstream_source(name)
    for agp in (False, True):
        a, b = ours(name, msgs, tools, agp, kw), theirs(name, src, msgs, tools, agp, kw)
        assert _same(a, b), (name, case, kw, agp, a, b)


def test_the_conversations_exercise_what_each_template_renders():
    """Not vacuous: tool calls, tool definitions and reasoning reach the render where the template renders them."""
    def text(name, case, **kw):
        msgs, tools = CONVERSATIONS[case]
        out = ours(name, msgs, tools, False, kw)
        assert isinstance(out, str), (name, case)
        return out

    for name in ("llama-3.1", "llama-3.2"):
        t = text(name, "tool")
        assert '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>' in t and '"description"' in t
    t = text("llama-3.1", "tool", builtin_tools=["get_weather"])
    assert '<|python_tag|>get_weather.call(city="Paris")<|eom_id|>' in t and "Environment: ipython\nTools: get_weather" in t
    for name in ("qwen2.5", "qwen3"):
        t = text(name, "tool")
        assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>' in t
        assert "<tools>\n" in t and "<tool_response>\n" in t
    assert "<think>\nRome: cloudy.\n</think>\n\nCloudy." in text("qwen3", "reasoning-multi")
    assert "Paris: sunny." not in text("qwen3", "reasoning-multi")                  # earlier reasoning dropped
    assert '[TOOL_CALLS]get_weather[CALL_ID]abc123XYZ[ARGS]{"city": "Paris"}</s>' in text("mistral-small-3.2", "tool")
    assert '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abc123XYZ"}]</s>' in \
        text("mistral-nemo", "tool")
    assert "<start_of_turn>user\nYou are terse.\n\nWhat's" in text("gemma-3", "plain-system-multi")
    t = text("deepseek-r1", "reasoning-in-content")
    assert t.endswith("<｜Assistant｜>\n\nSunny.<｜end▁of▁sentence｜>") and "Hmm." not in t   # reasoning dropped
    t = text("gpt-oss", "reasoning-tool", reasoning_effort="high")
    assert "Reasoning: high" in t and "<|channel|>commentary json<|message|>" in t and t.endswith("<|return|>")
    assert "<|channel|>analysis<|message|>18 is sunny.<|end|>" in t
    assert "<|channel|>final<|message|>Sunny, 18 °C.<|end|>" in text("gpt-oss", "plain-system-multi")


# ------------------------------------------------------------------------------------------ training variants
def _eot_at(text: str, lo: int, hi: int, eots, *, last: bool):
    best = None
    for e in eots:
        p = text.rfind(e, lo, hi) if last else text.find(e, lo, hi)
        if p >= 0 and (best is None or (p > best[0] if last else p < best[0])):
            best = (p, p + len(e))
    return best


#: text that continues the same answer after an end-of-turn string (GPT-OSS: the analysis message ends with <|end|>,
#: the final message or tool call that follows opens another <|start|>assistant)
CONTINUES = {"gpt-oss": "<|start|>assistant"}


def _turn_end(name: str, text: str, start: int, eots) -> tuple[int, int]:
    eot = _eot_at(text, start, len(text), eots, last=False)
    while name in CONTINUES and text.startswith(CONTINUES[name], eot[1]):
        eot = _eot_at(text, eot[1], len(text), eots, last=False)
    return eot


def expected_regions(name: str, msgs, tools, kw) -> tuple[str, list[tuple[int, int, str]]]:
    """(row, [(start, end, how)]) for each assistant turn, by the definitions in the module docstring."""
    t = builtin(name).pinned(NOW)
    eots = t.meta.end_of_turn + EXTRA_EOTS.get(name, ())
    text = t.render(msgs, tools=tools, **kw)
    out, prev = [], 0
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        prompt = t.render(msgs[:i], add_generation_prompt=True, tools=tools, **kw)
        alone = t.render(msgs[:i + 1], tools=tools, **kw)
        if text.startswith(prompt):
            start = len(prompt)
            if text.startswith(alone) and alone.startswith(prompt):
                end, how = _eot_at(alone, start, len(alone), eots, last=True)[1], "prefix"
            else:
                end, how = _turn_end(name, text, start, eots)[1], "rewritten"
        else:
            eot, lo = None, prev
            while True:   # the first end-of-turn string after prev that has a header before it
                eot = _eot_at(text, lo, len(text), eots, last=False)
                heads = [text.rfind(h, prev, eot[0]) + len(h) for h in HEADERS[name] if text.rfind(h, prev, eot[0]) >= 0]
                if heads:
                    break
                lo = eot[1]
            start = max(heads)
            end, how = _turn_end(name, text, start, eots)[1], "row"
        out.append((start, end, how))
        prev = end
    return text, out


def pipeline_regions(name: str, msgs, tools, kw) -> list[tuple[int, int]]:
    """The pipeline's own regions (what the mask trains), through the end-of-turn string after each."""
    from tmplcheck.validator.tokens import locate_messages

    t = builtin(name).pinned(NOW)
    render_kw = {**kw, **({"tools": tools} if tools else {})}
    eots = t.meta.end_of_turn + EXTRA_EOTS.get(name, ())
    loc = locate_messages(t, msgs, render_kw=render_kw, eots=eots)
    out = []
    for s in loc.spans:
        if s.role != "assistant":
            continue
        end = s.content_end
        for e in eots:
            if end is not None and loc.text.startswith(e, end):
                end += len(e)
                break
        out.append((s.content_start, end))
    return out


#: (template, conversation, settings) where the pipeline's regions differ from the definition: what is expected,
#: what the pipeline gives (an expected failure while it differs, checked to still differ)
PIPELINE_DIFFERS: dict[tuple[str, str, str], str] = {
    # none left: every case where the inference prompt is no prefix of the row (Mistral's tool list and system
    # message moving to the last user turn, GPT-OSS dropping earlier analysis, DeepSeek-R1 dropping tool calls) is
    # located from the message before the turn (locate._aligned_start) and agrees with the markers
}


@pytest.mark.parametrize("name,case,kw", CASES)
def test_training_variant_is_byte_equal_and_marks_what_each_turn_generates(name, case, kw):
    # apply_chat_template drops None-valued keys (_normalize_chat_messages) before render_jinja_template
    from transformers.utils.chat_template_utils import _normalize_chat_messages, render_jinja_template

    msgs, tools = CONVERSATIONS[case]
    kw = json.loads(kw)
    t = builtin(name).pinned(NOW)
    for agp in (False, True):
        plain = ours(name, msgs, tools, agp, kw)
        ctx = {**t.context, **kw}
        try:
            rendered, indices = render_jinja_template([_normalize_chat_messages(msgs)],
                                                      chat_template=t.training_source, tools=tools,
                                                      add_generation_prompt=agp, return_assistant_tokens_mask=True,
                                                      **ctx)
        except Exception:  # noqa: BLE001
            assert isinstance(plain, tuple), (name, case, agp, "the training variant refuses what the template renders")
            continue
        assert rendered[0] == plain, (name, case, kw, agp)
        text, spans = t.render_with_mask(msgs, add_generation_prompt=agp, tools=tools, **kw)
        assert (text, [tuple(s) for s in spans]) == (rendered[0], [tuple(s) for s in indices[0]])
    if isinstance(ours(name, msgs, tools, False, kw), tuple) or (name, case) in NO_SPANS:
        return
    text, want = expected_regions(name, msgs, tools, kw)
    _, spans = t.render_with_mask(msgs, tools=tools, **kw)
    got = [tuple(s) for s in spans]
    assert got == [(a, b) for a, b, _ in want], (name, case, kw, [text[a:b] for a, b in got],
                                                 [(text[a:b], how) for a, b, how in want])
    for a, b in got:   # each span ends with an end-of-turn string, and only the template's text follows
        assert any(text[a:b].endswith(e) for e in t.meta.end_of_turn + EXTRA_EOTS.get(name, ())), text[a:b]
    key = (name, case, json.dumps(kw, sort_keys=True))
    pipe = pipeline_regions(name, msgs, tools, kw)
    if key in PIPELINE_DIFFERS:
        assert pipe != got, f"{key} agrees now: drop it from PIPELINE_DIFFERS"
        pytest.xfail(PIPELINE_DIFFERS[key])
    else:
        assert pipe == got, (key, [text[a:b] if a is not None and b is not None else None for a, b in pipe],
                             [text[a:b] for a, b in got])
