"""Every D code: its fixture triggers it at the right line and pointer; the seed example passes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tmplcheck.validator.codes import RULES
from tmplcheck.validator.gate import GateOptions, run_gate

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures" / "dataset"

# fixture -> the (line, code, pointer) it must produce, exactly
EXPECTED: dict[str, set[tuple[int, str, str]]] = {
    "clean.jsonl": set(),
    "openai_clean.jsonl": set(),
    "invalid_json.jsonl": {(2, "D001", "")},
    "invalid_utf8.jsonl": {(2, "D002", "")},
    "bom.jsonl": {(1, "D003", "")},
    "crlf.jsonl": {(1, "D004", ""), (2, "D004", "")},
    "blank_line.jsonl": {(2, "D005", "")},
    "row_not_object.jsonl": {(2, "D006", "")},
    "missing_conversation.jsonl": {(2, "D007", "")},
    "conversation_not_list.jsonl": {(2, "D008", "/conversations")},
    "message_not_object.jsonl": {(2, "D009", "/conversations/1")},
    "message_missing_field.jsonl": {(2, "D010", "/conversations/1")},
    "field_wrong_type.jsonl": {(2, "D011", "/conversations/1/value")},
    "unknown_role.jsonl": {(2, "D012", "/conversations/0/from")},
    "empty_content.jsonl": {(2, "D013", "/conversations/1/value")},
    "edge_whitespace.jsonl": {(2, "D014", "/conversations/1/value")},
    "system_not_first.jsonl": {(2, "D015", "/conversations/1/from")},
    "multiple_system.jsonl": {(2, "D015", "/conversations/1/from"), (2, "D016", "/conversations/1/from")},
    "consecutive_same_role.jsonl": {(2, "D017", "/conversations/1/from")},
    "not_ending_with_assistant.jsonl": {(2, "D018", "/conversations/2/from")},
    "no_assistant_turn.jsonl": {(2, "D019", "/conversations")},
    "duplicate_row.jsonl": {(3, "D020", "")},
    "mixed_formats.jsonl": {(2, "D021", "/messages")},
    "empty.jsonl": {(0, "D023", "")},
    "typed_content.jsonl": {(2, "D021", "/messages"), (2, "D024", "/messages/0/content")},
    "first_turn_not_user.jsonl": {(2, "D025", "/conversations/1/from")},
    "control_characters.jsonl": {(2, "D026", "/conversations/0/value")},
    "lone_surrogate.jsonl": {(2, "D027", "/conversations/0/value")},
    "duplicate_key.jsonl": {(2, "D028", "/conversations/0/value")},
    "replacement_character.jsonl": {(2, "D029", "/conversations/0/value")},
    "list_rows.json": {(3, "D013", "/conversations/1/value")},
    # tool use and reasoning (each file's first row is its clean counterpart)
    "tools_clean.jsonl": set(),
    "tools_sharegpt_clean.jsonl": set(),   # function_call / observation turns, tools as a JSON string
    "openai_unknown_role.jsonl": {(2, "D012", "/messages/1/role"), (2, "D019", "/messages")},
    "tool_calls_not_list.jsonl": {(2, "D040", "/messages/1/tool_calls")},
    "tool_call_without_name.jsonl": {(2, "D041", "/messages/1/tool_calls/0/function")},
    "tool_arguments_invalid.jsonl": {(2, "D043", "/messages/1/tool_calls/0/function/arguments")},
    "tool_call_undefined.jsonl": {(2, "D044", "/messages/1/tool_calls/0/function/name")},
    "tool_result_without_call.jsonl": {(2, "D045", "/messages/1")},
    "tool_schema_invalid.jsonl": {(2, "D046", "/tools/1")},
    "row_field_wrong_type.jsonl": {(2, "D047", "/tools")},
    "template_kwargs_invalid.jsonl": {(2, "D048", "/chat_template_kwargs")},
    "mixed_role_conventions.jsonl": {(2, "D049", "/conversations")},
    "reasoning_mixed.jsonl": {(0, "D050", "")},
    "tool_arguments_string.jsonl": set(),   # D042 needs a template that double-encodes (tests/test_tool_rows.py)
    "training_flag_not_assistant.jsonl": {(1, "D051", "/messages/0/weight")},
    "training_flag_invalid.jsonl": {(1, "D052", "/messages/1/weight"), (2, "D052", "/messages/1/train")},
    "nothing_to_train.jsonl": {(1, "D053", "/messages")},
    "training_flags_clean.jsonl": set(),
}

ALL_CODES = [
    (1, "D003", ""), (2, "D001", ""), (2, "D004", ""), (3, "D002", ""), (4, "D005", ""), (5, "D006", ""),
    (6, "D007", ""), (7, "D008", "/conversations"), (8, "D009", "/conversations/0"), (9, "D010", "/conversations/0"),
    (10, "D011", "/conversations/0/value"), (11, "D012", "/conversations/0/from"),
    (12, "D013", "/conversations/0/value"), (13, "D014", "/conversations/0/value"),
    (14, "D015", "/conversations/2/from"), (14, "D018", "/conversations/2/from"),
    (15, "D015", "/conversations/1/from"), (15, "D016", "/conversations/1/from"),
    (16, "D017", "/conversations/1/from"), (17, "D018", "/conversations/2/from"), (18, "D019", "/conversations"),
    (19, "D020", ""), (20, "D021", "/messages"), (21, "D021", "/messages"), (21, "D024", "/messages/0/content"),
    (22, "D025", "/conversations/0/from"), (23, "D026", "/conversations/0/value"),
    (24, "D027", "/conversations/0/value"), (25, "D028", "/conversations/0/from"),
    (26, "D029", "/conversations/0/value"), (27, "D022", ""),
]


def found(path: Path, **kw) -> set[tuple[int, str, str]]:
    res = run_gate(path, GateOptions(**kw))
    return {(f.line, f.code, f.pointer) for f in res.findings}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_triggers_exactly_its_codes(name):
    assert found(FIX / name) == EXPECTED[name]


def test_line_too_long_is_skipped_without_loading():
    res = run_gate(FIX / "line_too_long.jsonl", GateOptions(max_line_bytes=1024))
    assert [(f.line, f.code) for f in res.findings] == [(2, "D022")]
    assert res.summary["rows_read"] == 2  # the rows around it are still checked


def test_every_d_code_has_a_fixture_that_triggers_it():
    # D022: test_line_too_long_is_skipped_without_loading; D042 (needs a template): tests/test_tool_rows.py;
    # D060-D062 (row bounds): tests/test_hostile_lines.py and fixtures/manifest.toml
    triggered = {code for exp in EXPECTED.values() for _, code, _ in exp} | {"D022", "D042", "D060", "D061", "D062"}
    d_codes = {c for c in RULES if c.startswith("D")}
    assert d_codes <= triggered
    for code in d_codes:
        fixture = RULES[code].fixture
        assert fixture, code
        assert (ROOT / "fixtures" / fixture).is_file(), (code, fixture)


def test_all_codes_fixture_reports_each_at_its_line():
    res = run_gate(FIX / "all_codes.jsonl", GateOptions(max_line_bytes=2048))
    assert [(f.line, f.code, f.pointer) for f in res.findings] == ALL_CODES
    # D023 (empty file) cannot share a file; tool-use, reasoning and training-flag codes have their own fixtures
    # (EXPECTED)
    tool_codes = {f"D{n:03d}" for n in range(40, 54)} | {"D060", "D061", "D062"}   # the row bounds: fixtures/bounds
    assert {c for c in RULES if c.startswith("D")} - {c for _, c, _ in ALL_CODES} - tool_codes == {"D023"}
    assert res.exit_code == 1


def test_seed_example_passes_unchanged():
    res = run_gate(ROOT / "examples" / "tweets.jsonl")
    assert res.findings == [] and res.exit_code == 0
    assert res.summary["rows"] == 2


def test_bad_rows_never_stop_the_rest():
    res = run_gate(FIX / "all_codes.jsonl", GateOptions(max_line_bytes=2048))
    assert res.summary["rows"] == 26  # every line but the blank one is accounted for
    assert res.summary["rows_read"] + res.summary["rows_unreadable"] == 26


def test_select_and_ignore():
    assert {c for _, c, _ in found(FIX / "all_codes.jsonl", select=["D01"], max_line_bytes=2048)} == {
        "D010", "D011", "D012", "D013", "D014", "D015", "D016", "D017", "D018", "D019"}
    got = {c for _, c, _ in found(FIX / "all_codes.jsonl", ignore=["D", "empty-content"], max_line_bytes=2048)}
    assert got == set()
    got = {c for _, c, _ in found(FIX / "all_codes.jsonl", ignore=["empty-content"], max_line_bytes=2048)}
    assert "D013" not in got and "D012" in got


def test_forced_input_format(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"messages": [{"role": "user", "content": "a"},
                                          {"role": "assistant", "content": "B"}]}) + "\n")
    assert found(p) == set()
    assert found(p, input_format="sharegpt") == {(1, "D007", "")}


def test_json_list_streams_large_rows(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"q{i} " + "x" * 70000},
                          {"role": "assistant", "content": f"A{i}"}]} for i in range(5)]
    p = tmp_path / "big.json"
    p.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]")
    res = run_gate(p)
    assert res.summary["rows_read"] == 5 and res.findings == []


def test_truncated_json_list(tmp_path):
    p = tmp_path / "cut.json"
    p.write_text('[{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "B"}]},\n'
                 '{"messages": [{"role": "user"')
    res = run_gate(p)
    assert [(f.line, f.code) for f in res.findings] == [(2, "D001")]


def test_the_ascii_shortcut_agrees_with_the_regex():
    """``is_plain`` (bytes.translate for ASCII text) says exactly what the D026/D027/D029 regex says."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from tmplcheck.validator.checks.dataset import _ODD, is_plain

    @settings(max_examples=400, deadline=None, database=None)
    @given(st.one_of(st.text(st.characters(max_codepoint=0x7F)), st.text(st.characters(max_codepoint=0x2FF)),
                     st.text()))
    def check(s):
        assert is_plain(s) == (_ODD.search(s) is None)

    check()
    for c in range(0x80):
        assert is_plain(chr(c)) == (_ODD.search(chr(c)) is None), c


def test_duplicate_keys_found_at_any_depth_and_nothing_else_changes():
    """The first decode only flags a key seen twice (then the tracking decoder says where): the value is exactly
    ``json.loads``'s, and D028 is reported exactly when some object, at any depth, repeats a key."""
    import json as _json

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from tmplcheck.validator.ingest import _DECODER, _Record, _decode, _walk_dups

    keys = st.sampled_from(["a", "b", "from", "value"])
    leaf = st.one_of(st.integers(), st.text(max_size=5), st.none(), st.booleans())

    def obj_text(children):
        return st.lists(st.tuples(keys, children), max_size=4).map(
            lambda kv: "{" + ", ".join(f"{_json.dumps(k)}: {v}" for k, v in kv) + "}")

    texts = st.recursive(leaf.map(_json.dumps), lambda c: st.one_of(
        obj_text(c), st.lists(c, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]")), max_leaves=12)

    @settings(max_examples=300, deadline=None, database=None)
    @given(texts)
    def check(text):
        obj, found = _decode(_Record(1, text.encode(), []), "x.jsonl")
        assert obj == _json.loads(text)
        dups = list(_walk_dups(_DECODER.decode(text)))
        assert sorted(f.pointer for f in found if f.code == "D028") == sorted(
            f"{p}/{k.replace('~', '~0').replace('/', '~1')}" for p, k in dups)

    check()
