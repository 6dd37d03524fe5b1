"""Tool calls, tool definitions, reasoning and template arguments: rendered exactly as transformers renders them, and
trained as what the assistant generates.

The differential part renders every upstream template of the llama-cpp-python sdist (templates written by Meta, Qwen,
DeepSeek, Mistral, OpenAI, NVIDIA, IBM...) on HF-schema conversations with tools, tool calls (object and string
arguments), tool results, reasoning under each of its names, documents and template arguments, with our renderer
and with transformers' own ``apply_chat_template``; both must give the same text, or both refuse.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tmplcheck.assets import upstream_templates_dir
from tmplcheck.validator.render import HFRenderer, TemplateRenderError

ROOT = Path(__file__).resolve().parent.parent
UP = upstream_templates_dir()
FIX = ROOT / "fixtures" / "dataset"
LLAMA31 = UP / "meta-llama-Llama-3.1-8B-Instruct.jinja"
QWEN3 = UP / "Qwen-Qwen3-0.6B.jinja"

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city"}},
                   "required": ["city"]}}}
USER = {"role": "user", "content": "What's the weather in Paris?"}
CALL = {"role": "assistant", "content": "", "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
RESULT = {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "{\"temp_c\": 18}"}
ANSWER = {"role": "assistant", "content": "It is 18 °C in Paris."}

#: (conversation, render keyword arguments): what people fine-tune on today
CASES = {
    "tool_use": ([USER, CALL, RESULT, ANSWER], {"tools": [WEATHER]}),
    "tool_use_system": ([{"role": "system", "content": "You are a weather bot."}, USER, CALL, RESULT, ANSWER],
                        {"tools": [WEATHER]}),
    "string_arguments": ([USER, {**CALL, "tool_calls": [{"id": "call_1", "type": "function", "function": {
        "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}, RESULT, ANSWER], {"tools": [WEATHER]}),
    "null_content_call": ([USER, {**CALL, "content": None}, RESULT, ANSWER], {"tools": [WEATHER]}),
    "tools_no_calls": ([USER, ANSWER], {"tools": [WEATHER]}),
    "reasoning_content": ([{"role": "user", "content": "2+2?"},
                           {"role": "assistant", "content": "4", "reasoning_content": "Add them."},
                           {"role": "user", "content": "3+3?"},
                           {"role": "assistant", "content": "6", "reasoning_content": "Add again."}], {}),
    "thinking_alias": ([{"role": "user", "content": "2+2?"},
                        {"role": "assistant", "content": "4", "thinking": "Add them."}], {}),
    "reasoning_alias": ([{"role": "user", "content": "2+2?"},
                         {"role": "assistant", "content": "4", "reasoning": "Add them."}], {}),
    "think_in_content": ([{"role": "user", "content": "2+2?"},
                          {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\n4"}], {}),
    "thinking_off": ([{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
                     {"enable_thinking": False}),
    "effort_high": ([{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
                    {"reasoning_effort": "high"}),
    "documents": ([{"role": "user", "content": "Summarise."}, {"role": "assistant", "content": "Done."}],
                  {"documents": [{"title": "Doc", "text": "Paris is in France."}]}),
    "typed_content": ([{"role": "user", "content": [{"type": "text", "text": "Hello"}]},
                       {"role": "assistant", "content": "Hi"}], {}),
}


def upstream_names() -> list[str]:
    return sorted(p.name[:-len(".jinja")] for p in UP.glob("*.jinja"))


@pytest.fixture(scope="module")
def hf_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _ours(src, conv, agp, kw):
    try:
        return HFRenderer(src, variables={"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}).render(
            conv, add_generation_prompt=agp, **kw)
    except TemplateRenderError:
        return "raises"


def _theirs(tok, src, conv, agp, kw):
    try:
        return tok.apply_chat_template(conv, chat_template=src, tokenize=False, add_generation_prompt=agp, **kw)
    except Exception:  # noqa: BLE001 - a template's refusal, whatever its type
        return "raises"


@pytest.mark.parametrize("name", upstream_names())
def test_tool_and_reasoning_rows_render_as_transformers_does(hf_tokenizer, name):
    src = (UP / f"{name}.jinja").read_text()
    compared = 0
    for case, (conv, kw) in CASES.items():
        for agp in (False, True):
            ours, theirs = _ours(src, conv, agp, kw), _theirs(hf_tokenizer, src, conv, agp, kw)
            assert ours == theirs, (name, case, agp)
            compared += ours != "raises"
    assert compared or name in {"fireworks-ai-llama-3-firefunction-v2"}, f"{name} renders none of the cases"


# ------------------------------------------------------------------------------------------- through the CLI
def _cli(*args, stdin: str | None = None):
    return subprocess.run([sys.executable, "-m", "tmplcheck", *map(str, args)], capture_output=True, text=True,
                          input=stdin, timeout=600)


def _row(tmp_path, conv, **fields) -> Path:
    p = tmp_path / "rows.jsonl"
    p.write_text(json.dumps({"messages": conv, **fields}, ensure_ascii=False) + "\n", encoding="utf-8")
    return p


def _trained(tmp_path, template, tokenizer, conv, **fields) -> dict[int, str]:
    """The trained text of each message (``show --format json``'s runs of trained tokens, by message)."""
    r = _cli("show", _row(tmp_path, conv, **fields), "--line", 1, "-t", template, "-k", tokenizer, "--format", "json")
    assert r.returncode in (0, 1), r.stderr
    table = json.loads(r.stdout)
    out: dict[int, str] = {}
    for run in table["trained"]:
        out[run["message"]] = out.get(run["message"], "") + run["text"]
    return out


def _generated(template_path: Path, conv, kw, eot: str) -> dict[int, str]:
    """What each assistant turn generates, from transformers itself: the render of the conversation up to and
    including the turn, after the render of the conversation before it with the generation prompt, through the
    turn's last end-of-turn string."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
                                  bos_token="<|begin_of_text|>", eos_token=eot)
    src = template_path.read_text()
    out = {}
    for i, m in enumerate(conv):
        if m["role"] != "assistant":
            continue
        prompt = tok.apply_chat_template(conv[:i], chat_template=src, tokenize=False, add_generation_prompt=True,
                                         **kw)
        turn = tok.apply_chat_template(conv[:i + 1], chat_template=src, tokenize=False, **kw)
        assert turn.startswith(prompt)
        gen = turn[len(prompt):]
        out[i] = gen[:max(gen.rfind(e) + len(e) for e in ("<|eot_id|>", "<|eom_id|>", "<|im_end|>") if e in gen)]
    return out


def test_llama31_tool_row_trains_the_tool_call_and_the_answer(tmp_path):
    conv = [USER, CALL, RESULT, ANSWER]
    got = _trained(tmp_path, LLAMA31, "llama-3", conv, tools=[WEATHER])
    assert got == {1: '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>',
                   3: "It is 18 °C in Paris.<|eot_id|>"}
    assert got == _generated(LLAMA31, conv, {"tools": [WEATHER]}, "<|eot_id|>")


def test_qwen3_tool_and_reasoning_row_trains_reasoning_calls_and_answers(tmp_path):
    conv = [USER, {**CALL, "reasoning_content": "I need the weather tool."}, RESULT,
            {**ANSWER, "reasoning_content": "18 degrees, say it."}]
    got = _trained(tmp_path, QWEN3, "qwen2", conv, tools=[WEATHER])
    assert got == {
        1: '<think>\nI need the weather tool.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": '
           '{"city": "Paris"}}\n</tool_call><|im_end|>',
        3: "<think>\n18 degrees, say it.\n</think>\n\nIt is 18 °C in Paris.<|im_end|>"}
    assert got == _generated(QWEN3, conv, {"tools": [WEATHER]}, "<|im_end|>")


def test_qwen3_earlier_reasoning_is_reported_lost_not_mislocated(tmp_path):
    conv = [{"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4.", "reasoning_content": "Simple arithmetic: 2+2=4."},
            {"role": "user", "content": "And 3+3?"},
            {"role": "assistant", "content": "6.", "reasoning_content": "3+3 is 6."}]
    p = _row(tmp_path, conv)
    r = _cli(p, "-t", QWEN3, "-k", "qwen2", "--format", "json")
    doc = json.loads(r.stdout)
    codes = {(f["code"], f.get("pointer", "")) for f in doc["findings"]}
    assert ("M020", "/messages/1/reasoning_content") in codes
    assert not any(c == "M001" for c, _ in codes)   # the earlier turn is not a mislocated header
    lost = next(f for f in doc["findings"] if f["code"] == "M020")
    assert lost["data"]["tokens_lost"] > 0
    got = _trained(tmp_path, QWEN3, "qwen2", conv)
    assert got == {1: "4.<|im_end|>", 3: "<think>\n3+3 is 6.\n</think>\n\n6.<|im_end|>"}


def test_qwen3_empty_think_block_trained_and_the_setting_that_fixes_it(tmp_path):
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    r = _cli(_row(tmp_path, conv), "-t", QWEN3, "-k", "qwen2", "--format", "json")
    doc = json.loads(r.stdout)
    codes = {f["code"] for f in doc["findings"]}
    assert "M021" in codes
    t007 = next(f for f in doc["findings"] if f["code"] == "T007")
    assert "enable_thinking=false" in t007["message"]
    # with enable_thinking=false the empty block is the prompt's, not trained
    r = _cli(_row(tmp_path, conv, chat_template_kwargs={"enable_thinking": False}), "-t", QWEN3, "-k", "qwen2",
             "--format", "json")
    assert "M021" not in {f["code"] for f in json.loads(r.stdout)["findings"]}
    got = _trained(tmp_path, QWEN3, "qwen2", conv, chat_template_kwargs={"enable_thinking": False})
    assert got == {1: "Hello!<|im_end|>"}


def test_reasoning_under_the_wrong_setting_is_a_prompt_mismatch(tmp_path):
    conv = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4", "reasoning_content": "Add."}]
    r = _cli(_row(tmp_path, conv, chat_template_kwargs={"enable_thinking": False}), "-t", QWEN3, "-k", "qwen2",
             "--format", "json")
    m = [f for f in json.loads(r.stdout)["findings"] if f["code"] == "M022"]
    assert m and m[0]["data"]["setting"] == "enable_thinking=true"


def test_string_arguments_are_double_encoded_by_llama31_not_by_qwen3(tmp_path):
    p = FIX / "tool_arguments_string.jsonl"
    r = _cli(p, "-t", LLAMA31, "-k", "llama-3", "--format", "json")
    got = {(f["line"], f["code"], f.get("pointer", "")) for f in json.loads(r.stdout)["findings"]
           if f["code"].startswith("D")}
    assert got == {(2, "D042", "/messages/1/tool_calls/0/function/arguments")}
    r = _cli(p, "-t", QWEN3, "-k", "qwen2", "--format", "json")
    assert not [f for f in json.loads(r.stdout)["findings"] if f["code"] == "D042"]


def test_tool_rows_against_llamacpp_are_explained_not_unexplained(tmp_path):
    r = _cli(FIX / "tools_clean.jsonl", "-t", LLAMA31, "--format", "json")
    codes = [f["code"] for f in json.loads(r.stdout)["findings"]]
    assert "X020" in codes and "X011" not in codes


def test_render_takes_tools_documents_and_template_kwargs(tmp_path):
    msgs = tmp_path / "m.json"
    msgs.write_text(json.dumps([USER, CALL, RESULT, ANSWER]))
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([WEATHER]))
    r = _cli("render", "-t", QWEN3, "-m", msgs, "--tools", tools, "--template-kwargs", '{"enable_thinking": false}',
             "--add-generation-prompt")
    assert r.returncode == 0, r.stderr
    expected = HFRenderer(QWEN3.read_text()).render([USER, CALL, RESULT, ANSWER], add_generation_prompt=True,
                                                    tools=[WEATHER], enable_thinking=False)
    assert r.stdout == expected and "<tools>" in expected and expected.endswith("<think>\n\n</think>\n\n")
    # a row's own tools win over --tools; llama.cpp's renderer says what it leaves out
    row = tmp_path / "row.json"
    row.write_text(json.dumps({"messages": [USER, CALL, RESULT, ANSWER], "tools": [WEATHER]}))
    r = _cli("render", "-t", QWEN3, "-m", row, "--renderer", "llamacpp")
    assert r.returncode == 0 and "X020" in r.stderr and "<tools>" not in r.stdout


def test_sharegpt_function_call_rows_render_as_their_openai_twins(tmp_path):
    from tmplcheck.validator.ingest import read_rows

    share = next(read_rows(FIX / "tools_sharegpt_clean.jsonl")).conversation
    openai = next(read_rows(FIX / "tools_clean.jsonl")).conversation
    src = QWEN3.read_text()
    assert share.render_kw() == openai.render_kw() and len(share.tools) == 1   # tools given as a JSON string
    strip = lambda ms: [{k: v for k, v in m.items() if k not in ("tool_call_id", "name")} for m in ms]  # noqa: E731
    calls = [m["tool_calls"][0]["function"] for m in share.dicts() if m.get("tool_calls")]
    assert calls == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    a = HFRenderer(src).render(share.dicts(), **share.render_kw())
    b = HFRenderer(src).render(strip(openai.dicts()), **openai.render_kw())
    assert a == b
