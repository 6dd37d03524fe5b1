"""Content-opaque templates (``validator/opaque.py``): the analysis refuses every construct that looks inside a content,
the fill equals the real render wherever it is used (every built-in and every upstream template of the llama.cpp
sdist the analysis accepts, on generated conversations), the size bounds still fire, and the gate gives the same
findings with the fill on and off."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tmplcheck.assets import ensure_sdist, upstream_templates_dir
from tmplcheck.templates import Template, TemplateMeta, builtin, registry
from tmplcheck.validator import strategies as S
from tmplcheck.validator.opaque import FillRenderer, analyse
from tmplcheck.validator.render import TemplateRenderError

ROOT = Path(__file__).resolve().parent.parent

LOOP = "{%- for message in messages %}{0}{%- endfor %}"


def loop(body: str) -> str:
    return LOOP.replace("{0}", body)


# ------------------------------------------------------------------------------------------------- the analysis
OPAQUE = {
    "paste": loop("{{ '<' + message['role'] + '>' + message['content'] + '</s>' }}"),
    "trim and tilde": loop("{{ message.role ~ ': ' ~ message.content | trim }}"),
    "truthiness": loop("{% if message.content %}{{ message.content }}{% else %}(empty){% endif %}"),
    "type test": loop("{% if message.content is string %}{{ message.content }}{% endif %}"),
    "get with default": loop("{{ message.get('content', '') }}"),
    "system first": "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] | trim %}"
                    "{% set rest = messages[1:] %}{% else %}{% set sys = '' %}{% set rest = messages %}{% endif %}"
                    "{{ sys }}{% for m in rest %}{{ m.content }}{% endfor %}",
    "namespace store": "{% set ns = namespace(sys='') %}{% for m in messages %}{% if m.role == 'system' %}"
                       "{% set ns.sys = m.content %}{% endif %}{% endfor %}{{ ns.sys }}",
    "role filters": "{{ messages | selectattr('role', 'equalto', 'user') | list | length }}"
                    "{{ messages | map(attribute='role') | join(',') }}{{ (messages | last).content }}",
    "key test": loop("{% if 'tool_calls' in message %}x{% endif %}{{ message.content }}"),
    "previous role": loop("{% if loop.previtem is defined and loop.previtem.role == 'user' %}>{% endif %}"
                          "{{ message.content }}"),
    "conditional value": loop("{{ (message.content if message.role == 'user' else '[' + message.content + ']') }}"),
    "set block": loop("{% set turn %}<{{ message.role }}>{{ message.content }}{% endset %}{{ turn }}"),
    "macro on clean args": "{% macro head(r) %}<{{ r }}>{% endmacro %}" + loop("{{ head(message.role) }}"
                                                                               "{{ message.content }}"),
    "generation block": loop("{% if message.role == 'assistant' %}{% generation %}{{ message.content }}"
                             "{% endgeneration %}{% else %}{{ message.content }}{% endif %}"),
}
NOT_OPAQUE = {
    "compared": loop("{% if message.content == 'x' %}y{% endif %}"),
    "in content": loop("{% if '<think>' in message.content %}y{% endif %}{{ message.content }}"),
    "method": loop("{{ message.content.split('</think>')[-1] }}"),
    "slice": loop("{{ message.content[:5] }}"),
    "length": loop("{{ message.content | length }}"),
    "tojson": loop("{{ message.content | tojson }}"),
    "replace": loop("{{ message.content | replace('a', 'b') }}"),
    "loop over content": loop("{% for c in message.content %}{{ c }}{% endfor %}"),
    "message written": loop("{{ message }}"),
    "messages as json": "{{ messages | tojson }}",
    "map contents": "{{ messages | map(attribute='content') | join }}",
    "computed key": loop("{% set k = 'content' %}{{ message[k] }}"),
    "items": loop("{% for k, v in message.items() %}{{ v }}{% endfor %}"),
    "copy": loop("{{ message.copy() }}"),
    "method as an item": loop("{{ message['values']() | list | join }}"),
    "bare method": loop("{{ message.get }}{{ message.content }}"),
    "macro on content": "{% macro body(c) %}{{ c }}{% endmacro %}" + loop("{{ body(message.content) }}"),
    "macro on message": "{% macro body(m) %}{{ m.content }}{% endmacro %}" + loop("{{ body(message) }}"),
    "namespace alias": "{% set ns = namespace(sys='') %}{% set ns.sys = messages[0].content %}{% set other = ns %}"
                       "{% if other.sys == 'x' %}y{% endif %}",
    "namespace item": "{% set ns = namespace(sys='') %}{% set ns.sys = messages[0].content %}"
                      "{% if ns['sys'] == 'x' %}y{% endif %}",
    "accumulated": "{% set ns = namespace(all='') %}{% for m in messages %}{% set ns.all = ns.all + m.content %}"
                   "{% endfor %}{{ ns.all }}",
    "filter block": loop("{% filter upper %}{{ message.content }}{% endfilter %}"),
    "include": "{% include 'other' %}",
    "test with content arg": loop("{% if message.role is equalto(message.content) %}x{% endif %}"),
    "content in a list": loop("{% set xs = [message.content] %}{{ xs | join }}"),
    "arithmetic": loop("{{ message.content * 2 }}"),
    "length test in condition": loop("{{ message.content if message.content | length > 3 }}"),
    "messages in a call": "{{ raise_exception(messages) }}",
    "message compared": loop("{% if message == messages[0] %}x{% endif %}"),
}


@pytest.mark.parametrize("name", list(OPAQUE))
def test_paste_only_templates_are_opaque(name):
    a = analyse(OPAQUE[name])
    assert a.opaque, a.reason


@pytest.mark.parametrize("name", list(NOT_OPAQUE))
def test_templates_that_look_inside_content_are_not(name):
    a = analyse(NOT_OPAQUE[name])
    assert not a.opaque
    assert a.reason


def test_the_analysis_reports_trim_and_copies():
    assert analyse(OPAQUE["trim and tilde"]).trims and not analyse(OPAQUE["paste"]).trims
    two = analyse(loop("{% set x = message.content + message.content %}{{ message.content }}"))
    assert two.opaque and two.copies == 2


#: built-ins that are their model's upstream template, byte for byte (tests/test_builtins_modern.py): as opaque as
#: that template, and these look inside contents (tojson of tool results, </think> splits, content comparisons), so
#: their rows are rendered, never filled
UPSTREAM_TEXT = {"llama-3.1", "llama-3.2", "qwen3", "mistral-small-3.2", "mistral-nemo", "gemma-3", "deepseek-r1",
                 "gpt-oss"}


def test_every_builtin_is_opaque():
    """The built-ins paste contents only, so the gate fills every row of theirs (a template edit that looks inside a
    content makes this fail and says where); the upstream-text ones are checked to be still not opaque."""
    for name in registry():
        t = builtin(name)
        if name in UPSTREAM_TEXT:
            assert not analyse(t.source).opaque, f"{name} is opaque now: drop it from UPSTREAM_TEXT"
            continue
        for src in filter(None, (t.source, t.training_source)):
            a = analyse(src)
            assert a.opaque, (name, a.reason)


def test_upstream_templates_that_look_inside_content_are_refused():
    ensure_sdist()
    d = upstream_templates_dir()
    # Meta's Llama 3.1 writes tool results through tojson; Qwen3 splits reasoning out of the content
    for stem in ("meta-llama-Llama-3.1-8B-Instruct", "Qwen-Qwen3-0.6B", "deepseek-ai-DeepSeek-R1-Distill-Llama-8B"):
        a = analyse((d / f"{stem}.jinja").read_text(encoding="utf-8"))
        assert not a.opaque and "template line" in a.reason, stem
    assert analyse((d / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text(encoding="utf-8")).opaque


# ---------------------------------------------------------------------------------- the fill equals the render
def _upstream(stem: str) -> Template:
    from test_cross_upstream import tokens

    bos, eos = tokens(stem)
    src = (upstream_templates_dir() / f"{stem}.jinja").read_text(encoding="utf-8")
    return Template(TemplateMeta(name=stem, bos_token=bos, eos_token=eos), src, now=datetime(2024, 7, 26))


def _opaque_templates() -> list[tuple[str, Template]]:
    ensure_sdist()
    out = [(f"builtin:{n}", builtin(n)) for n in registry() if n not in UPSTREAM_TEXT]
    for p in sorted(upstream_templates_dir().glob("*.jinja")):
        if analyse(p.read_text(encoding="utf-8")).opaque:
            out.append((p.stem, _upstream(p.stem)))
    out.extend((name, Template(TemplateMeta(name=name, bos_token="<s>", eos_token="</s>"), src))
               for name, src in OPAQUE.items())
    return out


TEMPLATES = _opaque_templates()
#: opaque templates no conversation here is filled for: the tool_use variants need ``tools`` to render at all, and
#: two of the small ones write only some of the contents (a content not written has no place to fill)
NEVER_FILLED = {"CohereForAI-c4ai-command-r-plus-tool_use", "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use",
                "NousResearch-Hermes-3-Llama-3.1-8B-tool_use", "namespace store", "role filters"}


def _same(fill: FillRenderer, t: Template, msgs: list[dict]) -> bool:
    """Whether the fill was used; asserts it equals the real render where it was."""
    got = fill.fill(msgs)
    if got is None:
        return False
    r, at = got
    real = t.render_full(msgs)   # a shape the fill served renders for real too
    assert r.text == real.text
    assert r.undefined == real.undefined
    for i, m in enumerate(msgs):
        a, b = at[i]
        assert r.text[a:b] == m["content"]
    return True


@pytest.mark.parametrize("name,t", TEMPLATES, ids=[n for n, _ in TEMPLATES])
def test_fill_equals_the_render(name, t):
    fill = FillRenderer(t)
    assert fill.opaque
    used = []

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.one_of(S.valid_conversations(clean=True, max_pairs=3), S.valid_conversations(edges=True, max_pairs=2),
                     S.valid_conversations(clean=False, max_pairs=2), S.any_conversations(max_size=5)))
    def check(msgs):
        used.append(_same(fill, t, msgs))

    check()
    for msgs in ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
                 [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello."}]):
        for _ in range(2):   # the second time from the shape cache
            try:
                t.render_full(msgs)
            except TemplateRenderError:
                break
            used.append(_same(fill, t, msgs))
    if name not in NEVER_FILLED:
        assert any(used), "clean conversations must be filled"


def test_edge_whitespace_is_not_filled_when_the_template_trims():
    t = builtin("llama-3")
    fill = FillRenderer(t)
    msgs = [{"role": "user", "content": " Hi\n"}, {"role": "assistant", "content": "Hello."}]
    assert fill.fill(msgs) is None
    assert fill.fill([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]) is not None
    chatml = FillRenderer(builtin("chatml"))   # no trim: edge whitespace is pasted as it is
    assert _same(chatml, builtin("chatml"), msgs)


def test_rows_the_fill_cannot_serve():
    fill = FillRenderer(builtin("chatml"))
    assert fill.fill([{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]) is None
    assert fill.fill([{"role": "user", "content": "a\ue000b"}, {"role": "assistant", "content": "x"}]) is None
    assert fill.fill([{"role": "user", "content": "a", "name": "n"}, {"role": "assistant", "content": "x"}]) is None
    assert fill.fill([]) is None
    # a template that writes a content twice: no single place for it
    twice = Template(TemplateMeta(name="twice"), loop("{{ message.content }}{{ message.content }}"))
    assert FillRenderer(twice).opaque and FillRenderer(twice).fill([{"role": "user", "content": "a"}]) is None
    # a shape the template refuses is rendered for real (and reported there)
    gemma = FillRenderer(builtin("gemma"))
    assert gemma.fill([{"role": "system", "content": "a"}, {"role": "user", "content": "b"}]) is None


def test_size_bounds_still_fire():
    """A value holding two copies of a content passes the bound with the sentinel and fails it with a long content:
    the fill declines and the real render reports the size violation (T009's kind)."""
    src = loop("{% set x = message.content + message.content %}{{ message.content }}")
    t = Template(TemplateMeta(name="double"), src, max_chars=1000)
    fill = FillRenderer(t)
    ok = [{"role": "user", "content": "a" * 300}]
    assert _same(fill, t, ok)
    big = [{"role": "user", "content": "a" * 600}]   # 1200 > 1000 in x, the output itself stays under
    assert fill.fill(big) is None
    with pytest.raises(TemplateRenderError) as e:
        t.render_full(big)
    assert e.value.kind == "size"
    out = [{"role": "user", "content": "a" * 1001}]   # the output limit
    assert fill.fill(out) is None


# ------------------------------------------------------------------------------------------- the gate both ways
GATE_CASES = [
    ("dataset/all_codes.jsonl", "llama-3", "llama-3"), ("dataset/edge_whitespace.jsonl", "llama-3", "llama-3"),
    ("dataset/edge_whitespace.jsonl", "chatml", "qwen2"), ("dataset/empty_content.jsonl", "chatml", "qwen2"),
    ("dataset/clean.jsonl", "gemma", "gemma-4"), ("dataset/multiple_system.jsonl", "mistral-v3", "llama-2"),
    ("tokens/clean.jsonl", "llama-3.1", "llama-3"), ("tokens/control_in_content.jsonl", "llama-3", "llama-3"),
    ("tokens/double_bos.jsonl", "llama-3", "llama-3"), ("tokens/over_max_length.jsonl", "llama-3", "llama-3"),
    ("tokens/header_merge.jsonl", "chatml", "qwen2"), ("tokens/clean.jsonl", "phi-3", "phi-3"),
    ("templates/gemma_system.jsonl", "gemma", "gemma-4"),
    ("dataset/clean.jsonl", "templates/exponential_growth.jinja", "llama-3"),
]


def _gate(path: Path, template: str, tokenizer: str, fill: bool, jobs: int = 1):
    from tmplcheck.validator.gate import GateOptions, run_gate
    from tmplcheck.validator.stages import StageConfig, build_stages

    spec = str(ROOT / "fixtures" / template) if template.endswith(".jinja") else template
    stages = build_stages(StageConfig(template=spec, tokenizer=tokenizer, max_length=64,
                                      extra={"jobs": jobs, "fill": fill}))
    res = run_gate(path, GateOptions(stages=stages, jobs=jobs))
    summary = dict(res.summary)
    summary["template"] = {k: v for k, v in summary["template"].items() if k not in ("rows_filled", "content_opaque")}
    return [(f.line, f.code, f.pointer, f.message) for f in res.findings], summary, res.summary["template"]


@pytest.mark.parametrize("fixture,template,tokenizer", GATE_CASES, ids=[f"{c[0]}-{c[1]}" for c in GATE_CASES])
def test_gate_findings_are_the_same_with_and_without_the_fill(fixture, template, tokenizer):
    path = ROOT / "fixtures" / fixture
    a, sa, ta = _gate(path, template, tokenizer, fill=True)
    b, sb, tb = _gate(path, template, tokenizer, fill=False)
    assert a == b
    assert sa == sb
    assert tb["rows_filled"] == 0 and tb["content_opaque"] == {"used": False}
    if fixture == "dataset/clean.jsonl" and template == "gemma":
        assert ta["rows_filled"] == ta["rows_rendered"] > 0


def test_pooled_gate_with_the_fill_equals_the_serial_render(tmp_path):
    """Many rows (a process pool over chunks), clean and edge-whitespace rows mixed: same findings and summary."""
    import json
    import random

    rnd = random.Random(3)
    p = tmp_path / "rows.jsonl"
    with open(p, "w", encoding="utf-8") as f:
        for i in range(1500):
            q = " ".join(rnd.choice(["alpha", "beta", "<|eot_id|>", "\u00e9t\u00e9", "\n"]) for _ in range(6))
            if rnd.random() < 0.2:
                q = " " + q
            conv = [{"from": "human", "value": q.strip() or "x" if rnd.random() < 0.8 else q},
                    {"from": "gpt", "value": f"answer {i}"}]
            f.write(json.dumps({"conversations": conv}) + "\n")
    a, sa, ta = _gate(p, "llama-3", "llama-3", fill=True, jobs=2)
    b, sb, _ = _gate(p, "llama-3", "llama-3", fill=False, jobs=1)
    assert a == b and sa == sb
    assert 0 < ta["rows_filled"] < ta["rows_rendered"]
