"""A codes: every code has a fixture generation that triggers it (line 1) and a clean counterpart (line 2), scanned
with patterns derived from the real template registry and the real Llama 3 tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tmplcheck.artifacts.patterns import ArtifactPatterns, patterns_for
from tmplcheck.artifacts.scan import (A_CODES, Generation, parse_generation, parse_thresholds, scan_file,
                                      scan_generation, scan_rows)
from tmplcheck.validator.codes import RULES
from tmplcheck.validator.findings import Severity

FIX = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture(scope="module")
def pats():
    from tmplcheck.templates import registry
    from tmplcheck.validator.tokenizer import load_tokenizer

    return patterns_for(registry()["llama-3"], tokenizer=load_tokenizer("llama-3"))


def by_line(result, *, errors_only: bool = False) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for f in result.findings:
        if errors_only and f.severity is not Severity.ERROR:
            continue
        out.setdefault(f.line, set()).add(f.code)
    return out


def test_every_a_code_has_a_fixture_and_explanation():
    assert A_CODES == tuple(f"A{i:03d}" for i in range(1, 14))
    for c in A_CODES:
        r = RULES[c]
        assert r.fixture.startswith("generations/") and (FIX / r.fixture).is_file(), c
        assert all(h in r.explanation for h in ("What:", "Why it hurts:", "Fix:")), c
        assert r.severity is (Severity.INFO if c == "A013" else Severity.ERROR)


# code -> (pointer of the line-1 finding, other lines that must also trigger it, with their pointers)
EXPECT = {
    "A001": ("/output", {3: "/output"}),
    "A002": ("/output", {}),
    "A003": ("/output", {}),
    "A004": ("/output", {3: "/output"}),
    "A005": ("/output", {3: "/output"}),
    "A006": ("/finish_reason", {3: "/output_ids"}),
    "A007": ("/output", {3: "/output_ids/2"}),
    "A008": ("/output", {}),
    "A009": ("/output", {}),
    "A011": ("/output", {3: "/output"}),
    "A012": ("/output", {3: "/output"}),
}


@pytest.mark.parametrize("code", sorted(EXPECT))
def test_fixture_triggers_code_and_clean_counterpart_is_clean(code, pats):
    res = scan_file(FIX / RULES[code].fixture, pats)
    hits = [f for f in res.findings if f.code == code]
    ptr, more = EXPECT[code]
    assert any(f.line == 1 and f.pointer == ptr for f in hits), [(f.line, f.code, f.pointer) for f in res.findings]
    for line, p in more.items():
        assert any(f.line == line and f.pointer == p for f in hits), (line, [(f.line, f.pointer) for f in hits])
    lines = by_line(res, errors_only=True)
    assert 2 not in lines, f"clean counterpart flagged: {lines.get(2)}"
    expected_lines = {1, *more}
    assert {f.line for f in hits} == expected_lines
    assert res.exit_code == 1
    assert res.summary["artifacts"]["rates"][code] == pytest.approx(len(expected_lines) / res.summary["rows_read"])


def test_other_familys_token_is_a_fragment_not_a_control_token(pats):
    """Without ids only this template's control-token strings are control tokens (issue 16): ChatML's
    ``<|im_end|>`` in a Llama 3 output is a header fragment of another family (A004), not A003."""
    res = scan_file(FIX / RULES["A003"].fixture, pats)
    assert by_line(res)[3] == {"A004"}


def test_markup_in_code_is_an_info(pats):
    res = scan_file(FIX / RULES["A013"].fixture, pats)
    assert [(f.line, f.code, f.severity) for f in res.findings] == [(1, "A013", Severity.INFO)]
    assert res.exit_code == 0 and res.summary["artifacts"]["verdict"] == "pass"
    assert res.summary["artifacts"]["over_threshold"] == []


def test_clean_fixture_is_clean(pats):
    res = scan_file(FIX / "generations" / "clean.jsonl", pats)
    assert res.findings == [] and res.exit_code == 0
    assert res.summary["artifacts"]["verdict"] == "pass"
    assert res.summary["rows_read"] == 6


def test_invalid_rows_are_located_never_crash(pats):
    res = scan_file(FIX / "generations" / "invalid_rows.jsonl", pats)
    got = [(f.line, f.code, f.pointer) for f in res.findings]
    assert got == [
        (1, "A010", "/output"), (3, "A010", ""), (4, "A010", "/prompt"), (5, "A010", "/prompt/0"),
        (6, "A010", "/output_ids/1"), (7, "A010", "/finish_reason"), (8, "D001", ""), (9, "D005", ""),
        (10, "A010", ""),
    ]
    s = res.summary
    assert s["rows"] == 9 and s["rows_read"] == 5 and s["rows_unreadable"] == 4
    assert s["artifacts"]["rates"]["A010"] == pytest.approx(7 / 9)  # 7 rows with A010 of 9 (the blank line is no row)


def test_the_seed_failure_both_views(pats):
    """The issue's measured greedy output, as kept text and with special tokens skipped."""
    prompt = [{"role": "system", "content": "Write a tweet in all capital letters."},
              {"role": "user", "content": "The topic is: hate"}]
    kept = ("EVER BEST HATE THE EVER<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nWrite a tweet "
            "in all capital letters.<|eot_id|>")
    skipped = "EVER BEST HATE THE EVERsystem\n\nWrite a tweet in all capital letters."
    res = scan_rows([{"prompt": prompt, "output": kept}, {"prompt": prompt, "output": skipped}], pats)
    lines = by_line(res)
    assert {"A001", "A003", "A005", "A007", "A008"} <= lines[1]
    assert {"A001", "A005", "A008"} <= lines[2]
    a001 = [f for f in res.findings if f.code == "A001"]
    # the highlight points at "system" in the original text of both views
    assert kept[a001[0].data["start"]:a001[0].data["end"]] == "system"
    assert skipped[a001[1].data["start"]:a001[1].data["end"]] == "system"


def test_role_words_in_prose_are_not_flagged(pats):
    for text in ("Tell the user\nthe answer", "An ecosystem\nand a subsystem", "assistants help", "A user: hi",
                 "The model\nworks"):
        assert not [f for f in scan_generation(Generation(1, text), pats) if f.code in ("A001", "A002")], text


def test_patterns_come_from_the_registry(pats):
    from tmplcheck.templates import registry

    reg = registry()
    for meta in reg.values():
        for t in meta.special_tokens:
            assert t in pats.control_tokens, (meta.name, t)
    # role words are the scanned template's own: a Llama 3 model does not leak Gemma's "model"
    assert set(pats.role_words) == {"system", "user", "assistant"}
    assert set(patterns_for(reg["gemma"]).role_words) == {"user", "model"}
    assert patterns_for(reg["vicuna"]).role_words == ()   # plain-text headers leave no role word
    if "chatml" in reg:
        assert "<|im_start|>user" in {h.rendered for h in pats.foreign_headers}
    # the scanned template's own headers are not "foreign"
    assert not any(h.rendered.startswith("<|start_header_id|>") for h in pats.foreign_headers)
    assert 128009 in pats.stop_ids and pats.bos_id == 128000


def test_a_new_template_brings_its_own_patterns():
    from tmplcheck.templates import TemplateMeta, registry

    meta = TemplateMeta(
        name="narrator", bos_token="<<doc>>", eos_token="<<end>>", end_of_turn=("<<end>>",),
        special_tokens=("<<doc>>", "<<turn>>", "<<end>>"),
        role_headers={"user": "<<turn>>reader\n", "assistant": "<<turn>>narrator\n"},
        generation_prompt="<<turn>>narrator\n")
    p = patterns_for(meta, known=list(registry().values()))
    assert {"reader", "narrator"} <= set(p.role_words)
    codes = lambda text: {f.code for f in scan_generation(Generation(1, text, prompt="x"), p)}  # noqa: E731
    assert codes("Once upon a time.<<end>>") == set()
    assert codes("Once upon a time.<<end>> More.") == {"A003"}
    assert "A007" in codes("Once.<<doc>>Twice.")
    assert {"A001", "A005"} <= codes("Once upon a TIME.<<end>><<turn>>reader\nwhat next?")
    assert "A009" in codes("Once.<<end>><<turn>>narrator\nTwice.")
    # another family's token is not a control token of this template (no ids to say otherwise): a header fragment
    assert codes("Once.<|eot_id|> again") == {"A004"}


def test_thresholds():
    assert parse_thresholds(["A001=0.05"]) == {"A001": 0.05}
    t = parse_thresholds(["A=1%", "A006=0.5"])
    assert t["A002"] == pytest.approx(0.01) and t["A006"] == 0.5
    assert parse_thresholds(["A006=0.5", "all=0.1"])["A006"] == 0.5  # an exact code wins over a family
    for bad in ("A001", "A001=x", "A001=2", "Z9=0.1"):
        with pytest.raises(ValueError):
            parse_thresholds([bad])


def test_threshold_lowers_findings_within_it(pats):
    path = FIX / "generations" / "trailing_role_word.jsonl"   # A001 on 2 of 4 rows
    assert scan_file(path, pats, thresholds={"A001": 0.5}).exit_code == 0
    res = scan_file(path, pats, thresholds={"A001": 0.49})
    assert res.exit_code == 1 and res.summary["artifacts"]["over_threshold"] == ["A001"]
    warn = scan_file(path, pats, warn_only=True)
    assert warn.exit_code == 0 and all(f.severity is Severity.WARNING for f in warn.findings)


def test_strip_map_round_trip(pats):
    text = "A<|eot_id|>B<|start_header_id|>user<|end_header_id|>\n\nC"
    s, sm, om = pats.strip_controls(text)
    assert s == "AB" + "user\n\nC"
    for i, ch in enumerate(s):
        assert text[ArtifactPatterns.to_original(i, sm, om)] == ch


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                     max_leaves=12)
_row = st.fixed_dictionaries({}, optional={"prompt": _json, "output": st.text(max_size=60) | _json,
                                           "output_ids": st.lists(st.integers(0, 130000), max_size=8) | _json,
                                           "finish_reason": st.sampled_from(["stop", "length", "eos"]) | _json})
_pieces = st.lists(st.sampled_from(["<|eot_id|>", "<|begin_of_text|>", "system", "user", "\n", "\n\n", " ", "A",
                                    "b", "<|start_header_id|>", "<|end_header_id|>", "<|im_start|>", "im_start",
                                    "Write a tweet in all capital letters."]), max_size=20).map("".join)


@settings(max_examples=300, deadline=None)
@given(obj=_row | _json, text=_pieces)
def test_any_row_is_findings_never_an_exception(obj, text, pats):
    gen, found = parse_generation(obj, path="g.jsonl", line=7)
    assert all(f.line == 7 for f in found)
    if gen is not None:
        for f in scan_generation(gen, pats):
            assert f.line == 7
    g = Generation(3, text, prompt=[{"role": "system", "content": "Write a tweet in all capital letters."}])
    for f in scan_generation(g, pats):
        d = f.data
        if "start" in d:
            assert 0 <= d["start"] <= d["end"] <= len(text)
    json.dumps([f.to_dict() for f in scan_generation(g, pats)])


def test_generations_are_framed_like_datasets(pats, tmp_path):
    """A .json list of generations is read element by element, located by the line each element starts on,
    exactly as the gate reads a .json dataset."""
    lines = [json.loads(x) for x in (FIX / RULES["A001"].fixture).read_text(encoding="utf-8").splitlines() if x]
    as_list = tmp_path / "gens.json"
    as_list.write_text("[\n" + ",\n".join(json.dumps(x) for x in lines) + "\n]\n", encoding="utf-8")
    as_lines = tmp_path / "gens.jsonl"
    as_lines.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    listed = scan_file(as_list, pats)
    lined = scan_file(as_lines, pats)
    assert [(f.line - 1, f.code) for f in listed.findings] == [(f.line, f.code) for f in lined.findings]
    assert any(f.code == "A001" for f in listed.findings)


@pytest.mark.parametrize("template,text,want", [
    # the classes behind the misses the issue measured
    ("llama-3", "The answer is fooassistant", {"A001"}),
    ("llama-3", "All done.assistant", {"A001"}),
    ("llama-3", "Sure thinguser\n\nAnd then?", {"A001", "A005"}),
    ("alpaca", "Good luck!### Instruction:\nWrite a poem.", {"A005"}),
    ("alpaca", "The sum is 15.\n\n### Instruction", {"A005"}),
    ("alpaca", "Paris.\n\n### Response:\nParis.", {"A009"}),
    ("vicuna", "Glad to help.\n### Human: more?", {"A004"}),
    ("llama-3", "Bye!<|>user<|>\n\nhi", {"A004"}),
    # and behind the false alarms: look-alikes, requested speakers, code, real words
    ("llama-3", "Strike it: <s>old</s> new.", set()),
    ("mistral-v3", 'const char* kOpen = "<s>";', set()),
    ("mistral-v3", "Strike it: <s>old</s> new.", set()),
    ("mistral-v3", "Nested: <b><s>old</s></b> new.", set()),
    ("mistral-v3", "Here it is.</s><s>[INST] Next? [/INST] Yes.</s>", {"A003", "A007", "A005"}),
    ("vicuna", "USER: Hi\nAGENT: Hello", set()),
    ("llama-3", "The `<|eot_id|>` token ends a turn.", set()),
    ("llama-3", "A kernel subsystem\nand its ecosystem", set()),
    ("gemma", "She won a teaching assistantship", set()),
])
def test_issue_16_classes(template, text, want):
    from tmplcheck.templates import registry

    p = patterns_for(registry()[template])
    prompt = "Write a chat script with USER: and AGENT: lines." if "AGENT" in text else "Answer."
    got = {f.code for f in scan_generation(Generation(1, text, prompt=prompt), p) if f.severity is Severity.ERROR}
    assert want <= got if want else got == set(), (text, got)


def test_role_words_on_ids(pats):
    """With ids, a role word ending the answer or a line is a stripped header only where the ids hold the template's
    header (its special ids) around the word's tokens; an identifier such as request.user is text tokens, even when
    the ids hold a header elsewhere. Both views (kept, special tokens skipped) decide the same way."""
    from tmplcheck.validator.tokenizer import load_tokenizer

    tok = load_tokenizer("llama-3")
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    eot, head = "<|eot_id|>", "<|start_header_id|>{}<|end_header_id|>\n\n"

    def a001(written: str, skip: bool) -> list[str]:
        ids = enc(written)
        out = tok.decode(ids, skip_special_tokens=skip)
        fs = scan_generation(Generation(1, out, prompt="q", output_ids=ids, finish_reason="stop"), pats)
        return [out[f.data["start"]:f.data["end"]] + f"@{f.data['start']}" for f in fs if f.code == "A001"]

    for skip in (False, True):
        assert a001("The logged-in user is request.user", skip) == []
        assert a001(f"The logged-in user is request.user{eot}", skip) == []
        assert a001("g.user\nand request.user", skip) == []
        assert a001(f"Paris.{eot}{head.format('user')}And Berlin?", skip) != []
        assert a001(f"Done.{eot}<|start_header_id|>assistant", skip) != []     # a header cut by the ids' end
    # the identifier on the first line is text; the header after the second line is the leak
    found = a001(f"It is request.user\nsee docs.{eot}{head.format('user')}Thanks", True)
    assert found == [f"user@{len('It is request.user' + chr(10) + 'see docs.')}"]
    # the same text without ids is judged from text: the glued role word reads as a leak
    assert [f.code for f in scan_generation(Generation(1, "It is request.user"), pats) if f.code == "A001"]


def test_prompts_in_the_hf_chat_schema(pats):
    """Prompts of tool-use rows (content null with tool_calls, typed parts) are scanned, not A010; a row's tools
    make a tool call in the output legitimate."""
    prompt = [{"role": "system", "content": [{"type": "text", "text": "Write a tweet in all capital letters."}]},
              {"role": "user", "content": "Weather?"},
              {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {
                  "name": "get_weather", "arguments": {"city": "Paris"}}}]},
              {"role": "tool", "content": "22 C"}]
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>'
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    res = scan_rows([{"prompt": prompt, "output": "IT IS 22 C. Write a tweet in all capital letters."},
                     {"prompt": prompt, "output": call},
                     {"prompt": prompt, "output": call, "tools": tools}], pats)
    assert {(f.line, f.code) for f in res.findings} == {(1, "A008"), (2, "A012")}


def test_the_summary_says_what_was_judged_from_text(pats):
    res = scan_file(FIX / "generations" / "clean.jsonl", pats)   # one row of six carries output_ids
    art = res.summary["artifacts"]
    assert art["basis"] == {"ids": 1, "text": 5}
    assert "5 of 6 judged from text alone" in art["headline"]
    from tmplcheck.templates import registry

    no_tok = scan_file(FIX / "generations" / "clean.jsonl", patterns_for(registry()["llama-3"]))
    assert no_tok.summary["artifacts"]["basis"] == {"ids": 0, "text": 6}


def test_the_seed_failure_on_ids(pats):
    """The broken run's generation as `tmplcheck report` scans it: both views carry the ids, and the ids decide."""
    from tmplcheck.validator.tokenizer import load_tokenizer

    tok = load_tokenizer("llama-3")
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    ids = (enc("EVER BEST HATE THE EVER") + [128000]
           + enc("<|start_header_id|>system<|end_header_id|>\n\nWrite a tweet in all capital letters.") + [128009])
    prompt = [{"role": "system", "content": "Write a tweet in all capital letters."},
              {"role": "user", "content": "The topic is: hate"}]
    rows = [{"prompt": prompt, "output": tok.decode(ids, skip_special_tokens=s), "output_ids": ids,
             "finish_reason": "stop"} for s in (False, True)]
    assert rows[1]["output"].startswith("EVER BEST HATE THE EVERsystem\n\n")
    lines = by_line(scan_rows(rows, pats))
    for line in (1, 2):
        assert {"A001", "A003", "A005", "A007", "A008"} <= lines[line], lines


@pytest.mark.parametrize("prompt,text,leak", [
    # from text alone, NAME.role ending the output is an attribute when NAME reads as code or the role word is what
    # the conversation is about; a sentence's last word with a stripped header glued on stays a leak
    ("Where is the current user in Django?", "In a view it is request.user", False),
    ("Where does the handler get the caller?", "It reads ctx.user", False),
    ("Where does the handler get the caller?", "It reads self.ctx.user", False),
    ("Where does the handler get the caller?", "It reads the_ctx.user", False),
    ("Where is the system prompt set?", "It is in config.system", False),
    ("Is it finished?", "All done.assistant", True),
    ("Where does the handler get the caller?", "It reads request.user", True),
    # the template's header tail after it makes it a stripped header whatever NAME is
    ("Where is the current user in Django?", "In a view it is request.user\n\nThanks!", True),
])
def test_attribute_or_stripped_header_from_text(pats, prompt, text, leak):
    fs = scan_generation(Generation(1, text, prompt=[{"role": "user", "content": prompt}]), pats)
    codes = {f.code for f in fs if f.severity is Severity.ERROR}
    assert ("A001" in codes) is leak, (text, codes)
    if not leak:
        assert any(f.code == "A013" for f in fs), (text, [f.code for f in fs])
