"""Every X code: its fixture triggers it at the right line and pointer; CrossSummary counts the outcomes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tmplcheck.validator.codes import RULES
from tmplcheck.validator.ingest import read_rows
from tmplcheck.validator.crosscheck import CrossSummary, check_cross

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures" / "cross"
SPEC = json.loads((FIX / "templates.json").read_text())


def fixture_template(name: str):
    from tmplcheck.templates import Template, TemplateMeta

    spec = SPEC[name]
    src = (FIX / spec["template"]).read_text(encoding="utf-8")
    meta = TemplateMeta(name=Path(spec["template"]).stem, bos_token=spec.get("bos_token"),
                        eos_token=spec.get("eos_token"))
    return Template(meta, src)


def run_fixture(name: str, *, add_generation_prompt: bool = False):
    t = fixture_template(name)
    out, summary = [], CrossSummary()
    for row in read_rows(FIX / name):
        conv = row.conversation
        assert conv is not None, row.findings
        hf = t.render(conv.dicts(), add_generation_prompt=add_generation_prompt)
        fs = list(check_cross(conv, t, hf, add_generation_prompt=add_generation_prompt))
        summary.add(fs)
        out.extend(fs)
    return out, summary


# fixture -> exactly the (line, code, pointer) set it produces
EXPECTED: dict[str, set[tuple[int, str, str]]] = {
    "bos_one_side.jsonl": {(1, "X001", "")},
    "eos_one_side.jsonl": {(1, "X002", "")},
    "content_trimmed.jsonl": {(2, "X003", "/conversations/1/value")},
    "system_folded.jsonl": {(2, "X004", "/conversations/0/value")},
    "system_dropped.jsonl": {(2, "X005", "/conversations/0/value")},
    "preamble_one_side.jsonl": {(1, "X006", "/conversations/0/value")},
    "format_redetected.jsonl": {(1, "X007", "")},
    "generation_prompt_ignored.jsonl": {(2, "X008", "")},
    "nul_truncates_content.jsonl": {(2, "X009", "/conversations/0/value")},
    "template_unknown.jsonl": {(1, "X010", "")},
    "unexplained.jsonl": {(1, "X011", "/conversations/1/value")},
    "tools_not_rendered.jsonl": {(1, "X020", ""), (2, "X020", "")},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_triggers_exactly_its_code(name):
    found, _ = run_fixture(name)
    assert {(f.line, f.code, f.pointer) for f in found} == EXPECTED[name], [f.message for f in found]


def test_every_x_code_has_its_fixture():
    # X021/X022 (llama-server --jinja) come from the gate's template stage: tests/test_manifest.py and test_jinja_cross
    xs = {c: r for c, r in RULES.items() if c.startswith("X") and c not in ("X021", "X022")}
    assert len(xs) == 12
    covered = {code for exp in EXPECTED.values() for _, code, _ in exp}
    assert covered == set(xs)
    for code, rule in xs.items():
        assert rule.fixture.startswith("cross/") and (ROOT / "fixtures" / rule.fixture).is_file(), code
        assert any(c == code for _, c, _ in EXPECTED[Path(rule.fixture).name]), code
        assert len(rule.explanation) > 200 and "Fix" in rule.explanation


def test_messages_explain_and_show_the_diff():
    found, _ = run_fixture("unexplained.jsonl")
    (f,) = found
    assert f.severity.value == "error"
    # position, both snippets, control tokens and newlines visible
    assert "differ at character" in f.message and "⟦⟧" in f.message and "⟦<|eot_id|>⟧" in f.message
    assert "\\n" in f.message and "\n" not in f.message
    found, _ = run_fixture("format_redetected.jsonl")
    assert "mistral-v7" in found[0].message and "mistral-v7-tekken" in found[0].message
    assert "--chat-template mistral-v7-tekken" in found[0].hint
    found, _ = run_fixture("content_trimmed.jsonl")
    assert "trailing '\\n'" in found[0].message and found[0].severity.value == "warning"


def test_summary_counts_and_headline():
    _, s = run_fixture("content_trimmed.jsonl")
    d = s.as_dict()
    assert (d["rows"], d["identical"], d["explained"], d["unexplained"]) == (2, 1, 1, 0)
    assert d["format"] == "llama3"
    assert "llama.cpp/Ollama-style server" in d["headline"] and "stripped" in d["headline"]
    _, s = run_fixture("unexplained.jsonl")
    assert s.as_dict()["unexplained"] == 1 and "nothing explains" in s.headline()
    _, s = run_fixture("template_unknown.jsonl")
    assert s.unknown == 1 and "does not recognise" in s.headline()
    s = CrossSummary(builtin="chatml")
    s.add([])
    assert "exactly what training saw" in s.headline()
    _, s = run_fixture("bos_one_side.jsonl")  # BOS only: the tokenizer adds it on the server side
    assert s.as_dict()["equivalent"] == 1 and "apart from BOS/EOS" in s.headline()


def test_gate_says_unknown_template_once_with_the_count(tmp_path):
    """Through the gate, X010 is reported on the first row only and the summary counts every row."""
    from tmplcheck.validator.gate import GateOptions, run_gate
    from tmplcheck.validator.template_stage import TemplateStage

    row = (FIX / "template_unknown.jsonl").read_text(encoding="utf-8").strip()
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join([row] * 3) + "\n", encoding="utf-8")
    tmpl = fixture_template("template_unknown.jsonl")
    res = run_gate(data, GateOptions(stages=[lambda p: TemplateStage(p, tmpl)]))
    [x10] = [f for f in res.findings if f.code == "X010"]
    assert (x10.line, x10.data["rows"], x10.data["lines"]) == (1, 3, [1, 2, 3])   # folded: once, every row counted
    assert "3 rows, X010 shown on the first" in res.summary["template"]["headline"]
    assert res.summary["template"]["llamacpp"]["unknown"] == 3


def test_jinja_cross_through_the_gate():
    """llama-server --jinja: a variable it sets otherwise (X021, with the variable named), an engine difference
    (X022); nothing for a template both engines render alike; once per conversation shape."""
    import pytest

    from tmplcheck.validator import llamacpp_jinja as J
    from tmplcheck.validator.gate import GateOptions, run_gate
    from tmplcheck.validator.stages import StageConfig, build_stages

    if J.built() is None:
        pytest.skip("llama.cpp's Jinja engine is not built (scripts/setup builds it)")

    def xs(data, template):
        res = run_gate(data, GateOptions(stages=build_stages(StageConfig(template=template)), fold_per_file=False))
        return [f for f in res.findings if f.code in ("X021", "X022")]

    got = xs(FIX / "jinja_variables.jsonl", str(FIX / "jinja_thinking.jinja"))
    assert [f.code for f in got] == ["X021"] and got[0].data["causes"] == ["enable_thinking"]
    got = xs(FIX / "jinja_engine.jsonl", str(FIX / "jinja_wordcount.jinja"))
    assert [f.code for f in got] == ["X022"] and got[0].data["engine"]
    assert xs(ROOT / "fixtures" / "dataset" / "clean.jsonl", "llama-3") == []
