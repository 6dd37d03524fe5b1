"""llama.cpp's own Jinja engine (common/jinja from the pinned sdist, validator/llamacpp_jinja.py) as a third renderer:
it renders every built-in like jinja2, and every upstream template of the sdist like jinja2 on equal variables except
the differences listed here with their cause; llama-server's variables (enable_thinking, add_generation_prompt left
undefined when false, tools undefined without tools) explain the rest; ``tmplcheck render --renderer llamacpp-jinja``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tmplcheck.templates import builtin, load_template, registry
from tmplcheck.validator.render import TemplateRenderError

ROOT = Path(__file__).resolve().parents[1]

CONVERSATIONS = {
    "simple": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there"}],
    "system": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"},
               {"role": "assistant", "content": "Hi there"}, {"role": "user", "content": "Again"}],
}

#: upstream templates that llama.cpp's engine renders differently from jinja2 on the same variables, and why
ENGINE_DIFFERENCES = {
    "fireworks-ai-llama-3-firefunction-v2":
        "`system_prompt_suffix + \"\\n\" + functions` with `functions` undefined: jinja2 raises UndefinedError, "
        "llama.cpp's engine concatenates an empty string and renders",
}


@pytest.fixture(scope="module")
def engine():
    from tmplcheck.validator import llamacpp_jinja as lj

    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        pytest.skip("no C++ compiler: llama.cpp's Jinja engine cannot be built here (the renderer says so too)")
    lj.build()
    return lj


def _outcome(fn):
    try:
        return "text", fn()
    except (TemplateRenderError, Exception) as e:  # noqa: BLE001 - both engines' refusals count as one outcome
        return "refused", str(e)[:0]      # a refusal on both sides is the same outcome, whatever the words


def _hf(t, msgs, agp):
    return _outcome(lambda: t.render(msgs, add_generation_prompt=agp))


def _lc(engine, t, msgs, agp, **kw):
    r = engine.LlamaCppJinjaRenderer.of(t, **kw)
    return _outcome(lambda: r.render(msgs, add_generation_prompt=agp))


def test_build_info_names_the_sdist(engine):
    info = engine.build_info()
    assert info["from"].startswith("llama-cpp-python==0.3.36") and len(info["sources_sha256"]) == 64


def test_builtins_render_alike(engine):
    for name in registry():
        t = builtin(name)
        for msgs in CONVERSATIONS.values():
            for agp in (False, True):
                assert _lc(engine, t, msgs, agp, server_context=False) == _hf(t, msgs, agp), (name, agp)


def test_upstream_templates_alike_on_equal_variables_or_explained(engine):
    from tmplcheck.assets import ensure_sdist, upstream_templates_dir

    ensure_sdist()
    paths = sorted(upstream_templates_dir().glob("*.jinja"))
    assert len(paths) >= 60
    differ: dict[str, list] = {}
    refused_both = []
    for p in paths:
        t = load_template(str(p))
        for cname, msgs in CONVERSATIONS.items():
            for agp in (False, True):
                hf, lc = _hf(t, msgs, agp), _lc(engine, t, msgs, agp, server_context=False)
                if hf[0] == lc[0] == "refused":
                    refused_both.append((p.stem, cname, agp))
                elif hf != lc:
                    differ.setdefault(p.stem, []).append((cname, agp, hf[1][:80], lc[1][:80]))
    assert set(differ) == set(ENGINE_DIFFERENCES), {k: v[:1] for k, v in differ.items()}
    assert len(paths) - len(differ) >= 69   # 69 of the 70 render byte for byte alike (or both refuse)


def test_llama_server_variables(engine):
    # llama-server leaves add_generation_prompt undefined when false: a template testing `is not defined` then
    # writes the generation prompt anyway (Solar Open); enable_thinking is true by default
    from tmplcheck.assets import upstream_templates_dir

    solar = load_template(str(upstream_templates_dir() / "upstage-Solar-Open-100B.jinja"))
    msgs = CONVERSATIONS["simple"]
    server = engine.LlamaCppJinjaRenderer.of(solar).render(msgs, add_generation_prompt=False)
    assert server == solar.render(msgs, add_generation_prompt=True)
    llama3 = builtin("llama-3")
    assert engine.LlamaCppJinjaRenderer.of(llama3).render(msgs, add_generation_prompt=True) == \
        llama3.render(msgs, add_generation_prompt=True)


def test_sandbox_payload_reaches_nothing(engine):
    # the engine has no Python objects: the classic escape chain is undefined there, and calling it is an error
    with pytest.raises(engine.EngineError, match="not a function"):
        engine.render_raw("{{ cycler.__init__.__globals__.os.popen('id').read() }}x", {})
    assert engine.render_raw("{{ cycler.__init__.__globals__ }}x", {}) == "x"


def _cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "tmplcheck", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, input=stdin)


def test_render_command(engine):
    msgs = json.dumps(CONVERSATIONS["system"])
    a = _cli("render", "-t", "llama-3", "--messages", "-", "--renderer", "llamacpp-jinja", stdin=msgs)
    b = _cli("render", "-t", "llama-3", "--messages", "-", stdin=msgs)
    assert a.returncode == 0 and a.stdout == b.stdout, a.stderr
    r = _cli("render", "-t", "gemma", "--messages", "-", "--renderer", "llamacpp-jinja", stdin=msgs)
    assert r.returncode == 1 and "System role not supported" in r.stderr


def test_llama_server_renders_explained_on_every_upstream_template(engine):
    """With llama-server's own variables every difference from transformers' render is proven by switching one
    variable to transformers' value (enable_thinking, add_generation_prompt undefined when false, tools undefined),
    except the engine difference listed above."""
    from tmplcheck.assets import upstream_templates_dir

    causes: dict[str, set] = {}
    engine_diff = set()
    same = 0
    for p in sorted(upstream_templates_dir().glob("*.jinja")):
        t = load_template(str(p))
        for msgs in CONVERSATIONS.values():
            for agp in (False, True):
                c = engine.compare_with_hf(t, msgs, add_generation_prompt=agp)
                if c.same:
                    same += 1
                elif c.engine:
                    engine_diff.add(p.stem)
                else:
                    assert set(c.causes) <= set(engine.CAUSES)
                    causes.setdefault(p.stem, set()).update(c.causes)
    assert engine_diff == set(ENGINE_DIFFERENCES)
    assert causes["upstage-Solar-Open-100B"] == {"add_generation_prompt"}
    assert "tools" in causes["NousResearch-Hermes-3-Llama-3.1-8B-tool_use"]
    assert "enable_thinking" in causes["deepseek-ai-DeepSeek-V3.1"]
    assert same >= 200   # of 280 renders (70 templates x 2 conversations x generation prompt on/off)
