"""The static template audit (validator/audit.py, T010-T017): fixtures and their clean counterparts, a corpus of
sandbox-escape payloads (obfuscated variants included) gated behind a content trigger inside an otherwise correct
Llama 3 template, the sdist's ~70 real upstream templates as the clean side (no false alarm), and the audit's
findings through the gate (exit 1, located in the template, SARIF), render, probe and the loader."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tmplcheck.templates import load_template, registry, builtin
from tmplcheck.validator.audit import audit_source, audit_template, audit_vocabulary
from tmplcheck.validator.codes import RULES

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures" / "templates"
ROWS = FIX / "rows.jsonl"
LLAMA3 = builtin("llama-3").source

# code -> the fixture that triggers it (and ``<stem>.clean.jinja`` beside it, which must give no audit issue)
FIXTURES = {
    "T010": "audit_gated_payload", "T011": "audit_attr_filter", "T012": "audit_computed_name",
    "T013": "audit_gadget", "T014": "audit_content_trigger", "T015": "audit_invisible",
    "T016": "audit_lookalike_token", "T017": "audit_escaped_literal",
}

# sandbox-escape payloads, each one a T010/T012/T013 on its own; obfuscated spellings of the same chains
PAYLOADS = {
    "plain-cycler": "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "joiner": "{{ joiner.__init__.__globals__.os.popen('id').read() }}",
    "lipsum-item": "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "self-context": "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.popen('id').read() }}",
    "class-walk": "{% for c in ''.__class__.__mro__[1].__subclasses__() %}{% if c.__name__ == 'Popen' %}{{ c('id', shell=True) }}{% endif %}{% endfor %}",
    "mro-method": "{{ ''.__class__.mro()[1].__subclasses__() }}",
    "concat-plus": "{{ cycler['__in' + 'it__']['__glo' + 'bals__']['os'].popen('id').read() }}",
    "concat-tilde-attr": "{{ cycler|attr('__in' ~ 'it__')|attr('__glo' ~ 'bals__') }}",
    "attr-plain": "{{ cycler|attr('__init__')|attr('__globals__') }}",
    "join-list": "{{ cycler|attr(['__', 'init', '__']|join)|attr(['__glo', 'bals__']|join) }}",
    "join-sep": "{{ cycler|attr(('in', 'it')|join('')|format) }}{{ cycler|attr(['', 'globals', '']|join('__')) }}",
    "format-method": "{{ cycler|attr('{0}{0}init{0}{0}'.format('_')) }}",
    "format-filter": "{{ cycler|attr('%sinit%s'|format('__', '__')) }}",
    "percent": "{{ cycler|attr('%sglobals%s' % ('__', '__')) }}",
    "multiply": "{{ cycler|attr('_' * 2 ~ 'globals' ~ '_' * 2) }}",
    "reverse": "{{ cycler|attr('__slabolg__'|reverse) }}",
    "slice-reverse": "{{ cycler|attr('__slabolg__'[::-1]) }}",
    "replace": "{{ cycler|attr('XXglobalsXX'|replace('X', '_')) }}",
    "upper-lower": "{{ cycler|attr('__GLOBALS__'|lower) }}",
    "hex-escape": "{{ cycler|attr('\\x5f\\x5fglobals\\x5f\\x5f') }}",
    "unicode-escape": "{{ cycler|attr('\\u005f\\u005fglobals\\u005f\\u005f') }}",
    "octal-escape": "{{ cycler|attr('\\137\\137globals\\137\\137') }}",
    "set-var": "{% set a = '__glo' %}{% set b = a ~ 'bals__' %}{{ cycler.__init__|attr(b) }}",
    "set-block": "{% set g %}__globals__{% endset %}{{ cycler.__init__|attr(g) }}",
    "namespace-smuggle": "{% set ns = namespace(a='__glo') %}{% set ns.b = ns.a ~ 'bals__' %}{{ joiner.__init__|attr(ns.b) }}",
    "namespace-object": "{% set ns = namespace(c=cycler) %}{{ ns.c.__init__ }}",
    "namespace-positional": "{% set ns = namespace(cycler.__init__.__globals__) %}{{ ns.os }}",
    "namespace-class": "{{ namespace.__init__.__globals__ }}",
    "namespace-dunder-kw": "{% set ns = namespace(__class__=1) %}",
    "loop-over-literals": "{% for k in ['__glob' ~ 'als__'] %}{{ cycler.__init__|attr(k) }}{% endfor %}",
    "dict-keys": "{{ cycler.__init__|attr(dict(__globals__=1)|first) }}",
    "dict-join": "{{ cycler|attr(dict(__init__=1)|join) }}",
    "map-attr": "{{ [cycler]|map(attribute='__init__')|list }}",
    "map-attr-filter": "{{ [cycler]|map('attr', '__init__')|list }}",
    "format-string-attr": "{{ '{0.__class__}'.format(messages) }}",
    "getitem-built-from-content": "{% set k = messages[0]['content'] ~ 'x' %}{{ cycler[k] }}",
    "attr-computed-from-content": "{{ cycler|attr(messages[0]['content']|trim ~ '') }}",
    "builtins": "{{ cycler.__init__.__globals__.__builtins__.__import__('os').system('id') }}",
    "subprocess": "{{ self.__init__.__globals__.__builtins__['__import__']('subprocess').check_output('id') }}",
    "config-request": "{{ config.__class__.__init__.__globals__['os'].popen('id').read() }}{{ request.application }}",
    "getattr-global": "{{ getattr(cycler, '__init__') }}",
    "range-class": "{{ range.__class__.__base__.__subclasses__() }}",
    "func-globals": "{{ raise_exception.func_globals }}{{ strftime_now.__globals__ }}",
    "frame": "{{ messages.gi_frame.f_back.f_globals }}",
    "loop-walk": "{% for m in messages %}{{ loop.__class__.__mro__ }}{% endfor %}",
    "item-dunder": "{{ messages['__class__'] }}",
    "caller": "{% macro m() %}{{ caller.__init__ }}{% endmacro %}",
}

GATE = "{%- if messages[0]['content'] == 'xyzzy' %}"


def gated(payload: str) -> str:
    """``payload`` behind a content trigger, inside the built-in Llama 3 template (before the generation prompt)."""
    return LLAMA3.replace("{%- if add_generation_prompt %}", GATE + payload + "{% endif %}\n{%- if add_generation_prompt %}")


def test_every_audit_code_is_in_the_table_with_its_fixture():
    for code, stem in FIXTURES.items():
        rule = RULES[code]
        assert rule.fixture == f"templates/{stem}.jinja", code
        assert (FIX / f"{stem}.jinja").is_file() and (FIX / f"{stem}.clean.jinja").is_file(), code


@pytest.mark.parametrize("code", [c for c in FIXTURES if c != "T016"])
def test_fixture_triggers_its_code_and_clean_counterpart_does_not(code):
    stem = FIXTURES[code]
    bad = audit_source((FIX / f"{stem}.jinja").read_text(encoding="utf-8"))
    hits = [i for i in bad if i.code == code]
    assert hits, (code, bad)
    assert all(i.line > 1 for i in hits)          # located (line 1 is each fixture's comment)
    clean = audit_source((FIX / f"{stem}.clean.jinja").read_text(encoding="utf-8"))
    assert clean == (), clean


def test_fixture_locations():
    [t14] = [i for i in audit_source((FIX / "audit_gated_payload.jinja").read_text()) if i.code == "T014"]
    assert (t14.line, t14.data["literal"]) == (6, "xyzzy") and t14.column > 0
    inv = audit_source((FIX / "audit_invisible.jinja").read_text(encoding="utf-8"))
    assert {(i.data["codepoint"], i.line) for i in inv} == {("U+202E", 2), ("U+200B", 5)}


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_payload_corpus_gated_in_llama3(name):
    issues = audit_source(gated(PAYLOADS[name]))
    payload_line = gated(PAYLOADS[name]).splitlines().index(
        next(line for line in gated(PAYLOADS[name]).splitlines() if GATE in line)) + 1
    escape = [i for i in issues if i.code in ("T010", "T012", "T013") and RULES[i.code].severity.value == "error"]
    assert escape, (name, issues)
    assert all(i.line == payload_line for i in escape), (name, escape)
    assert any(i.code == "T014" and i.data.get("literal") == "xyzzy" for i in issues), name


def test_payload_alone_without_trigger_is_still_found():
    for name, p in PAYLOADS.items():
        src = LLAMA3.replace("{%- endfor %}", "{%- endfor %}" + p, 1)
        assert any(i.code in ("T010", "T012", "T013") for i in audit_source(src)), name


def test_builtins_are_clean():
    for name in registry():
        t = builtin(name)
        assert audit_source(t.source) == (), name
        if t.training_source:
            assert audit_source(t.training_source) == (), name


def test_upstream_templates_give_no_false_alarm():
    from tmplcheck.assets import ensure_sdist, upstream_templates_dir

    ensure_sdist()
    paths = sorted(upstream_templates_dir().glob("*.jinja"))
    assert len(paths) >= 60
    alarms = {p.stem: [(i.code, i.line, i.message) for i in audit_source(p.read_text(encoding="utf-8"))]
              for p in paths}
    assert {k: v for k, v in alarms.items() if v} == {}


def test_markup_and_documented_switches_are_not_triggers():
    ok = LLAMA3.replace("{%- for message in messages %}", "{%- for message in messages %}"
                        "{%- if '</think>' in message['content'] or message.content.startswith('<tool_response>') %}"
                        "{% endif %}{%- if '/no_think' in message['content'] %}{% endif %}"
                        "{%- if message['content'] == '' or message['content'] is string %}{% endif %}")
    assert audit_source(ok) == ()
    trig = LLAMA3.replace("{%- for message in messages %}", "{%- for message in messages %}"
                          "{%- if message.content.strip().startswith('sudo mode') %}X{% endif %}")
    assert [i.code for i in audit_source(trig)] == ["T014"]
    # a whole content equal to a literal is a trigger even when the literal looks like markup
    for test in ("message['content'] == '<|unlock|>'", "message.content|trim is eq '[RUN]'",
                 "messages|selectattr('content', 'equalto', '<s>')|list"):
        src = LLAMA3.replace("{%- for message in messages %}", "{%- for message in messages %}{%- if " + test
                             + " %}X{% endif %}")
        assert [i.code for i in audit_source(src)] == ["T014"], test


def test_syntax_error_template_still_gets_its_text_audited():
    issues = audit_source("{% for m in messages %}\u202e{{ m.content }}")
    assert [i.code for i in issues] == ["T015"]


def test_lookalike_control_token_with_the_vocabulary(llama3_tokenizer):
    t = load_template(str(FIX / "audit_lookalike_token.jinja"))
    issues = audit_vocabulary(t, llama3_tokenizer)
    assert [(i.code, i.data.get("lookalike_of")) for i in issues] == [("T016", "<|eot_id|>")]
    clean = load_template(str(FIX / "audit_lookalike_token.clean.jinja"))
    assert audit_vocabulary(clean, llama3_tokenizer) == []
    # findings carry the tokenizer check too
    assert [f.code for f in audit_template(t, tokenizer=llama3_tokenizer)] == ["T016"]
    # a ChatML end of turn assembled at render time is not in the Llama 3 vocabulary; written literally it is K001's
    built = load_template(str(FIX / "audit_lookalike_token.clean.jinja"))
    built = type(built)(built.meta, built.source.replace("'<|eot_' ~ 'id|>'", "'<|im_' ~ 'end|>'"))
    [i] = audit_vocabulary(built, llama3_tokenizer)
    assert i.data == {"string": "<|im_end|>"} and "not in this tokenizer's vocabulary" in i.message
    literal = type(built)(built.meta, built.source.replace("'<|im_' ~ 'end|>'", "'<|im_end|>'"))
    assert audit_vocabulary(literal, llama3_tokenizer) == []
    assert audit_template(builtin("llama-3.1"), tokenizer=llama3_tokenizer) == []   # <|python_tag|>: literal


def test_loader_notes_the_audit_and_never_calls_a_payload_the_same_as_a_builtin():
    t = load_template(str(FIX / "audit_gated_payload.jinja"))
    assert t.meta.same_as is None
    assert any(n.startswith("static audit: T") for n in t.meta.notes)
    clean = load_template(str(FIX / "audit_gated_payload.clean.jinja"))
    assert clean.meta.same_as == "llama-3"


def _cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "tmplcheck", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, input=stdin)


def test_gate_fails_on_the_gated_payload_with_located_findings_and_sarif(tmp_path):
    cfg = tmp_path / "tmplcheck.toml"
    cfg.write_text("")
    tmpl = "fixtures/templates/audit_gated_payload.jinja"
    r = _cli(str(ROWS), "-t", tmpl, "-k", "llama-3", "--format", "sarif", "--config", str(cfg))
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    doc = json.loads(r.stdout)
    res = [x for x in doc["runs"][0]["results"] if x["ruleId"] in ("T010", "T013", "T014")]
    assert {x["ruleId"] for x in res} == {"T010", "T013", "T014"}
    for x in res:
        loc = x["locations"][0]["physicalLocation"]
        assert loc["artifactLocation"]["uri"].endswith("audit_gated_payload.jinja")
        assert loc["region"]["startLine"] == 6 and loc["region"]["startColumn"] > 1
    # the rows themselves never reach the payload: nothing but the audit fails them
    assert not [x for x in doc["runs"][0]["results"] if x["ruleId"] in ("T003", "T008")]


def test_render_warns_on_stderr_and_keeps_stdout_the_render():
    msgs = json.dumps([{"role": "user", "content": "hi"}])
    r = _cli("render", "-t", "fixtures/templates/audit_gated_payload.jinja", "--messages", "-", stdin=msgs)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("<|start_header_id|>user") or "<|start_header_id|>user" in r.stdout
    assert "T010" in r.stderr and "T014" in r.stderr and "T010" not in r.stdout


def test_probe_reports_the_audit_as_a_violation(llama3_tokenizer):
    from tmplcheck.validator.probe import run_probe

    res = run_probe(load_template(str(FIX / "audit_gated_payload.jinja")), llama3_tokenizer, examples=5,
                    only=["audit"])
    assert [v.property for v in res.violations] == ["audit"] and "T010" in res.violations[0].message
    ok = run_probe(builtin("llama-3"), llama3_tokenizer, examples=5, only=["audit"])
    assert ok.passed == ["audit"] and not ok.violations


def test_gate_reports_the_lookalike_with_the_tokenizer(tmp_path):
    cfg = tmp_path / "tmplcheck.toml"
    cfg.write_text("")
    r = _cli(str(ROWS), "-t", "fixtures/templates/audit_lookalike_token.jinja", "-k", "llama-3", "--format", "json",
             "--config", str(cfg))
    assert r.returncode == 1, r.stderr[-2000:]
    [t16] = [f for f in json.loads(r.stdout)["findings"] if f["code"] == "T016"]
    assert t16["path"].endswith("audit_lookalike_token.jinja") and t16["line"] == 4 and "<|eot_id|>" in t16["message"]


def test_audit_of_a_hostile_chain_of_variables_stays_fast():
    # each variable built from the previous one twice: a naive walk through the assignments is exponential
    import time

    src = "{% set a0 = tools[0].name %}" + "".join(f"{{% set a{i + 1} = a{i} ~ a{i} ~ '_' %}}" for i in range(300)) \
        + "{{ cycler[a300] }}"
    t0 = time.perf_counter()
    codes = {i.code for i in audit_source(src)}
    assert codes == {"T012", "T013"} and time.perf_counter() - t0 < 10
