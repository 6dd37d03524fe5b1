"""T codes: each fixture through the gate's template stage, asserting code, line and pointer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tmplcheck.templates import builtin, load_template
from tmplcheck.validator.checks.template import (
    check_generation_prompt,
    infer_structure,
    needle_probe,
    undefined_names,
)
from tmplcheck.validator.codes import RULES
from tmplcheck.validator.findings import Severity
from tmplcheck.validator.gate import GateOptions, run_gate
from tmplcheck.validator.template_stage import TemplateStage

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures" / "templates"
ROWS = FIX / "rows.jsonl"


def gate(data: Path, template, *, cross: bool = False):
    tmpl = template if not isinstance(template, (str, Path)) else load_template(str(template))
    opts = GateOptions(stages=[lambda p: TemplateStage(p, tmpl, cross=cross)])
    return run_gate(data, opts)


def of(result, code):
    return [f for f in result.findings if f.code == code]


def test_every_t_code_has_an_existing_fixture():
    t_rules = [r for r in RULES.values() if r.code.startswith("T")]
    assert len(t_rules) >= 9
    for r in t_rules:
        assert r.fixture and (ROOT / "fixtures" / r.fixture).is_file(), r.code
        assert "Why it hurts" in r.explanation and "Fix" in r.explanation


def test_clean_builtin_has_no_t_findings():
    res = gate(ROWS, "llama-3")
    assert [f for f in res.findings if f.code.startswith("T")] == []
    assert res.summary["template"]["rows_rendered"] == 2


def test_t001_syntax_error_with_line():
    res = gate(ROWS, FIX / "syntax_error.jinja")
    [f] = of(res, "T001")
    assert (f.line, f.pointer, f.severity) == (0, "", Severity.ERROR)
    assert "line 6" in f.message and "endfor" in f.message  # the end of the template, where `for` is unclosed
    assert f.data["template_line"] == 6
    assert res.summary["template"]["rows_rendered"] == 0 and res.exit_code == 1


def test_t002_undefined_variable():
    res = gate(ROWS, FIX / "undefined_variable.jinja")
    [f] = of(res, "T002")
    assert (f.line, f.pointer, f.severity) == (0, "", Severity.WARNING)
    assert "'preamble'" in f.message and f.data["template_line"] == 2
    assert res.exit_code == 0


def test_t002_not_raised_for_guarded_optional_variables():
    # Llama 3.1's template reads date_string, custom_tools, builtin_tools... always behind `is defined`
    from tmplcheck.assets import upstream_templates_dir

    assert undefined_names(builtin("llama-3.1")) == {}
    upstream = load_template(str(upstream_templates_dir() / "meta-llama-Llama-3.1-8B-Instruct.jinja"))
    assert undefined_names(upstream) == {}


def test_t002_bos_token_of_a_bare_file_without_tokens(tmp_path):
    p = tmp_path / "custom.jinja"
    p.write_text("{{ bos_token }}{% for m in messages %}### {{ m.role }}: {{ m.content }}\n{% endfor %}")
    t = load_template(str(p))
    assert t.meta.bos_token is None
    assert "bos_token" in undefined_names(t)


def test_t003_raises_per_row_with_exception_text():
    res = gate(FIX / "gemma_system.jsonl", "gemma")
    [f] = of(res, "T003")
    assert (f.line, f.pointer) == (2, "/messages")
    assert "System role not supported" in f.message
    assert f.data["kind"] == "raise"


def test_t003_mistral_roles_must_alternate(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, '
                    '{"role": "assistant", "content": "c"}]}\n')
    res = gate(data, "mistral-v3-tekken")
    [f] = of(res, "T003")
    assert f.line == 1 and "must alternate" in f.message


def test_t004_content_dropped():
    res = gate(ROWS, FIX / "drops_assistant.jinja")
    found = of(res, "T004")
    assert [(f.line, f.pointer) for f in found] == [(1, "/messages/1/content"), (2, "/messages/2/content")]
    assert res.exit_code == 1


def test_t004_upstream_mistral_nemo_drops_the_system_prompt_of_training_rows():
    from tmplcheck.assets import upstream_templates_dir

    res = gate(ROWS, upstream_templates_dir() / "mistralai-Mistral-Nemo-Instruct-2407.jinja")
    [f] = of(res, "T004")
    assert (f.line, f.pointer) == (2, "/messages/0/content")


def test_t005_repeated_and_moved():
    res = gate(ROWS, FIX / "repeats_system.jinja")
    [f] = of(res, "T005")
    assert (f.line, f.pointer, f.severity) == (2, "/messages/0/content", Severity.WARNING)
    assert "2 times" in f.message


def test_t005_moved_system_is_info(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}, '
                    '{"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}, '
                    '{"role": "assistant", "content": "d"}]}\n')
    res = gate(data, "mistral-v3")
    [f] = of(res, "T005")
    assert f.severity is Severity.INFO and f.pointer == "/messages/0/content"


def test_t006_missing_end_of_turn():
    res = gate(ROWS, FIX / "llama-3-no-eot.jinja")
    found = of(res, "T006")
    assert [(f.line, f.pointer) for f in found] == [(1, "/messages/1/content"), (2, "/messages/2/content")]
    assert "nothing follows" in found[0].message
    assert res.exit_code == 1


def test_t006_inference_finds_no_eot_and_builtins_have_theirs():
    broken = load_template(str(FIX / "llama-3-no-eot.jinja"))
    st = infer_structure(broken)
    assert st.ok and st.end_of_turn == ()
    assert broken.meta.bos_token == "<|begin_of_text|>"  # borrowed from the llama-3 family, with a note
    assert any("borrowed" in n for n in broken.meta.notes)


def test_t006_last_turn_only_missing(tmp_path):
    p = tmp_path / "t.jinja"
    p.write_text("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
                 "{% if not loop.last %}<|im_end|>\n{% endif %}{% endfor %}")
    t = load_template(str(p))
    probe = needle_probe(t, ("user", "assistant"))
    assert probe.text is not None
    res = gate(ROWS, t)
    assert {f.line for f in of(res, "T006")} == {1, 2}


def test_t007_generation_prompt_mismatch():
    res = gate(ROWS, FIX / "generation_prompt_mismatch.jinja")
    [f] = of(res, "T007")
    assert (f.line, f.pointer, f.severity) == (0, "", Severity.ERROR)
    assert f.data["generation_prompt"] == "<|start_header_id|>assistant<|end_header_id|>\n"
    assert f.data["training_header"] == "<|start_header_id|>assistant<|end_header_id|>\n\n"


def test_t007_missing_generation_prompt(tmp_path):
    p = tmp_path / "t.jinja"
    p.write_text("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}")
    [f] = check_generation_prompt(load_template(str(p)))
    assert f.severity is Severity.ERROR and "ignores add_generation_prompt" in f.message


def test_t007_whitespace_only_is_info():
    [f] = check_generation_prompt(builtin("vicuna"))
    assert f.severity is Severity.INFO
    [f] = check_generation_prompt(builtin("mistral-v3"))
    assert f.severity is Severity.INFO
    assert list(check_generation_prompt(builtin("llama-3"))) == []
    assert list(check_generation_prompt(builtin("phi-3"))) == []  # its no-prompt render ends in eos: still fine


def test_t008_sandbox_violation_and_no_side_effect(tmp_path):
    marker = Path("/tmp/tmplcheck-pwned")
    marker.unlink(missing_ok=True)
    res = gate(ROWS, FIX / "ssti_class_walk.jinja")
    found = of(res, "T008")
    assert [(f.line, f.pointer) for f in found] == [(1, "/messages")]  # then the template is not rendered again
    assert "__class__" in found[0].message and "template line 2" in found[0].message
    assert res.summary["template"]["rows_skipped"] == 1
    assert not marker.exists()


def test_t009_exponential_growth_stops_fast():
    import time

    t0 = time.monotonic()
    res = gate(ROWS, FIX / "exponential_growth.jinja")
    assert time.monotonic() - t0 < 5
    [f] = of(res, "T009")
    assert (f.line, f.pointer) == (1, "/messages")
    assert f.data["kind"] == "size"


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tmplcheck", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_cli_acceptance_seed_example_passes_with_llama3(tmp_path):
    # an empty config: examples/tmplcheck.toml also names a tokenizer, whose stage is tested elsewhere
    (tmp_path / "tmplcheck.toml").write_text("")
    r = _cli("examples/tweets.jsonl", "--template", "llama-3", "--format", "json",
             "--config", str(tmp_path / "tmplcheck.toml"))
    assert r.returncode == 0, r.stdout + r.stderr
    import json

    out = json.loads(r.stdout)
    assert not [f for f in out["findings"] if f["code"].startswith("T")]
    assert out["summary"]["template"]["rows_rendered"] == 2


def test_cli_acceptance_no_eot_template_fails():
    r = _cli("examples/tweets.jsonl", "--template", "fixtures/templates/llama-3-no-eot.jinja", "--format", "json")
    assert r.returncode == 1, r.stdout + r.stderr
    assert '"T006"' in r.stdout


def test_cli_unknown_template_is_a_usage_error():
    r = _cli("examples/tweets.jsonl", "--template", "no-such-template-xyz")
    assert r.returncode == 2
    assert "no-such-template-xyz" in r.stderr
