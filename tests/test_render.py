"""The HF renderer: equal to transformers' own apply_chat_template, sandboxed, bounded."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest

from tmplcheck.assets import upstream_templates_dir
from tmplcheck.templates import builtin, registry
from tmplcheck.validator.render import HFRenderer, TemplateLoadError, TemplateRenderError

UP = upstream_templates_dir()
SIMPLE = [{"role": "user", "content": "Hello"}]
CONVS = [
    SIMPLE,
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
    [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there"},
     {"role": "user", "content": " How are you? "}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"},
     {"role": "assistant", "content": "Hi there", "tool_calls": None}],
]
TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}

#: Upstream templates that cannot render the simple conversation, with the reason (checked to be still true).
UNRENDERABLE = {
    "CohereForAI-c4ai-command-r-plus-tool_use": "iterates `tools` (this variant needs tool definitions)",
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use": "iterates `tools` (this variant needs tool definitions)",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": "iterates `tools` (this variant needs tool definitions)",
    "fireworks-ai-llama-3-firefunction-v2": "needs a `functions` variable that apply_chat_template does not pass",
}


def upstream_names() -> list[str]:
    return sorted(p.name[:-len(".jinja")] for p in UP.glob("*.jinja"))


def test_the_sdist_ships_the_upstream_templates():
    assert len(upstream_names()) >= 60


@pytest.mark.parametrize("name", upstream_names())
def test_every_upstream_template_renders_or_is_listed(name):
    r = HFRenderer((UP / f"{name}.jinja").read_text(), variables=TOKENS)
    try:
        text = r.render(SIMPLE, add_generation_prompt=True)
    except TemplateRenderError as e:
        assert name in UNRENDERABLE, f"{name} fails ({e.kind}: {e}) and is not listed"
        return
    assert name not in UNRENDERABLE, f"{name} renders now: drop it from the table"
    assert "Hello" in text


# ------------------------------------------------------------------------------------------- vs transformers
@pytest.fixture(scope="module")
def hf_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _ours(src, conv, agp):
    try:
        return HFRenderer(src, variables=TOKENS).render(conv, add_generation_prompt=agp)
    except TemplateRenderError as e:
        return ("raises", str(e).split(": ", 1)[-1] if e.kind == "error" else str(e))


def _theirs(tok, src, conv, agp):
    import jinja2

    try:
        return tok.apply_chat_template(conv, chat_template=src, tokenize=False, add_generation_prompt=agp)
    except jinja2.TemplateError as e:
        return ("raises", str(e))
    except Exception as e:  # noqa: BLE001
        return ("raises", str(e))


@pytest.mark.parametrize("name", [n for n in upstream_names() if n not in UNRENDERABLE])
def test_equal_to_transformers_apply_chat_template(hf_tokenizer, name):
    src = (UP / f"{name}.jinja").read_text()
    for conv in CONVS:
        for agp in (False, True):
            assert _ours(src, conv, agp) == _theirs(hf_tokenizer, src, conv, agp), (name, conv, agp)


@pytest.mark.parametrize("name", sorted(registry()))
def test_builtins_equal_to_transformers(hf_tokenizer, name):
    t = builtin(name)
    for conv in CONVS:
        for agp in (False, True):
            theirs = hf_tokenizer.apply_chat_template(conv, chat_template=t.source, tokenize=False,
                                                      add_generation_prompt=agp, **t.context) \
                if not (name == "gemma" and conv[0]["role"] == "system") else None
            if theirs is None:
                with pytest.raises(TemplateRenderError, match="System role not supported"):
                    t.render(conv, add_generation_prompt=agp)
                continue
            try:
                assert t.render(conv, add_generation_prompt=agp) == theirs
            except TemplateRenderError as e:  # both must raise
                pytest.fail(f"{name}: we raise {e} where transformers renders")


@pytest.mark.parametrize("name", [n for n, m in registry().items() if m.has_generation_markers])
def test_generation_spans_equal_transformers(name):
    from transformers.utils.chat_template_utils import render_jinja_template

    t = builtin(name)
    conv = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there"},
            {"role": "user", "content": "Again"}, {"role": "assistant", "content": "Sure"}]
    text, spans = t.render_with_mask(conv)
    rendered, indices = render_jinja_template([conv], chat_template=t.training_source,
                                              return_assistant_tokens_mask=True, **t.context)
    assert (text, spans) == (rendered[0], [tuple(x) for x in indices[0]])
    assert "Hi there" in [text[a:b] for a, b in spans][0]   # after a channel header it generates first (gpt-oss)


# ---------------------------------------------------------------------------------------------- semantics
def test_trim_lstrip_loopcontrols_and_tojson():
    src = "{% for m in messages %}\n  {% if loop.index > 1 %}{% break %}{% endif %}\n{{ m | tojson }}\n{% endfor %}"
    out = HFRenderer(src).render([{"role": "user", "content": "<é>"}, {"role": "user", "content": "x"}])
    assert out == '{"role": "user", "content": "<é>"}\n'


def test_none_values_are_dropped_like_transformers():
    src = "{% for m in messages %}{{ 'tool_calls' in m }}{% endfor %}"
    assert HFRenderer(src).render([{"role": "assistant", "content": "x", "tool_calls": None}]) == "False"


def test_strftime_now_is_pinnable():
    src = "{{ strftime_now('%d %b %Y') }}"
    assert HFRenderer(src, now=datetime(2024, 7, 26)).render([]) == "26 Jul 2024"
    assert HFRenderer(src).render([]) == datetime.now().strftime("%d %b %Y")


def test_special_tokens_as_variables_and_overrides():
    r = HFRenderer("{{ bos_token }}|{{ eos_token }}|{{ pad_token }}", variables=TOKENS | {"pad_token": "<pad>"})
    assert r.render([]) == "<s>|</s>|<pad>"
    assert r.render([], bos_token="B") == "B|</s>|<pad>"


def test_raise_exception_and_undefined_names():
    with pytest.raises(TemplateRenderError) as e:
        HFRenderer("line1\n{{ raise_exception('nope') }}").render([])
    assert (e.value.kind, e.value.message, e.value.lineno) == ("raise", "nope", 2)
    full = HFRenderer("{{ a }}{% for x in b %}{% endfor %}{% if c is defined %}{{ c }}{% endif %}").render_full([])
    assert full.undefined == {"a", "b"}


def test_syntax_error_has_its_line():
    with pytest.raises(TemplateLoadError) as e:
        HFRenderer("ok\n{% if x %}\n{{ y }")
    assert e.value.kind == "syntax" and e.value.lineno == 3


def test_compiled_once_renders_many():
    r = HFRenderer(builtin("llama-3").source, variables={"bos_token": "<s>"})
    t0 = time.perf_counter()
    for i in range(2000):
        r.render([{"role": "user", "content": f"m{i}"}, {"role": "assistant", "content": "ok"}])
    assert time.perf_counter() - t0 < 5


# ---------------------------------------------------------------------------------------- SSTI payload set
MARK = Path("/tmp/tmplcheck-ssti-marker")
PAYLOADS = {
    "class-walk": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "class-only": "{{ ''.__class__ }}",
    "globals-via-cycler": "{{ cycler.__init__.__globals__.os.popen('touch /tmp/tmplcheck-ssti-marker').read() }}",
    "globals-via-joiner": "{{ joiner.__init__.__globals__ }}",
    "globals-via-namespace": "{{ namespace.__init__.__globals__ }}",
    "globals-via-lipsum": "{{ lipsum.__globals__['os'].system('touch /tmp/tmplcheck-ssti-marker') }}",
    "raise-exception-globals": "{{ raise_exception.__globals__ }}",
    "dict-global-walk": "{{ dict.__call__.__globals__ }}",
    "strftime-globals": "{{ strftime_now.__globals__ }}",
    "attr-filter": "{{ (''|attr('__class__')) }}",
    "format-string": "{{ '{0.__class__.__mro__}'.format('') }}",
    "format-map": "{{ '{x.__class__}'.format_map({'x': ''}) }}",
    "percent-format": "{{ '%s'|format(''.__class__) }}",
    "messages-mutation": "{{ messages.append({'role': 'user', 'content': 'x'}) }}",
    "dict-mutation": "{{ messages[0].update({'content': 'pwned'}) }}",
    "namespace-dunder": "{% set ns = namespace() %}{% set ns.__class__ = 1 %}",
    "self-reference": "{{ self.__init__.__globals__ }}",
    "loop-internals": "{% for m in messages %}{{ loop.__class__.__init__.__globals__ }}{% endfor %}",
    "range-self": "{{ range.__init__.__globals__ }}",
    "mro-getitem": "{{ ''['__class__'] }}",
}


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_ssti_payload_is_refused_without_side_effect(name):
    MARK.unlink(missing_ok=True)
    msgs = [{"role": "user", "content": "hi"}]
    before = [dict(m) for m in msgs]
    with pytest.raises(TemplateRenderError) as e:
        HFRenderer(PAYLOADS[name]).render(msgs)
    assert e.value.kind == "security", (name, e.value.kind, e.value.message)
    assert not MARK.exists()
    assert msgs == before


@pytest.mark.parametrize("src,kind", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "timeout"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "size"),
    ("{{ 'a' * 10000000000 }}", "size"),
    ("{{ 7 ** 123456789 }}", "size"),
    ("{% macro f(s, n) %}{% if n %}{{ f(s ~ s, n - 1) }}{% endif %}{% endmacro %}{{ f('a', 80) }}", "size"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "size"),
    ("{{ ''.center(10000000000) }}", "size"),
    ("{{ 'x'|center(10000000000) }}", "size"),
    ("{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}", "size"),
])
def test_hostile_templates_stop_within_seconds(src, kind):
    t0 = time.monotonic()
    with pytest.raises(TemplateRenderError) as e:
        HFRenderer(src, max_seconds=1.0, max_chars=1_000_000).render([])
    assert e.value.kind == kind, e.value.message
    assert time.monotonic() - t0 < 4


def test_watchdog_does_not_fire_after_a_fast_render():
    r = HFRenderer("{{ messages[0].content }}", max_seconds=0.05)
    for _ in range(50):
        assert r.render([{"role": "user", "content": "x"}]) == "x"
    time.sleep(0.1)  # a late timeout would be raised here, outside any render
    assert r.render([{"role": "user", "content": "y"}]) == "y"


def test_a_render_timeout_leaves_the_process_sound():
    """After the watchdog stopped a render, the process runs on: a hypothesis search (the probe's engine) finishes.
    Clearing the delivered exception with ``PyThreadState_SetAsyncExc(tid, NULL)`` left CPython's asynchronous
    exception signal set with nothing behind it, and the next ``hypothesis.find`` spun forever (run in a subprocess,
    so that a regression fails instead of hanging the suite)."""
    import subprocess
    import sys

    code = """if True:
        from hypothesis import HealthCheck, find, settings, strategies as st
        from tmplcheck.validator.render import HFRenderer, TemplateRenderError
        try:
            HFRenderer("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                       max_seconds=0.3).render([])
        except TemplateRenderError as e:
            assert e.kind == "timeout", e.kind
        cfg = settings(database=None, deadline=None, suppress_health_check=list(HealthCheck))
        print(find(st.lists(st.integers()), lambda xs: sum(xs) > 100, settings=cfg))
        print(HFRenderer("{{ messages[0].content }}").render([{"role": "user", "content": "still fine"}]))
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["[101]", "still", "fine"]
