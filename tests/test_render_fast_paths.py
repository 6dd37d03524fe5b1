"""The renderer's shortcuts give exactly what the plain path gives:

* ``_Environment.getattr``'s fast paths (a dict's item, a str method, a namespace's or loop's value) against the
  sandbox's own ``getattr`` on the same environment, over names that are and are not attributes, dict keys that
  shadow methods, "_" names, ``format``/``format_map``, values that are methods;
* ``tojson`` with an indent (cached by the value's compact form) against ``json.dumps``, on hypothesis values;
* ``same_arguments`` (one plain copy of a row's messages, tools and documents, ``tojson`` of their parts, for all
  the renders inside) against renders outside it, on tool, reasoning and plain rows of real upstream templates;
* ``errors_unshown``: the same error, without the template line only there.
"""

from __future__ import annotations

import json

import jinja2
import markupsafe
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.exceptions import SecurityError

from tmplcheck.validator import render as R


def _outcome(fn, *args):
    try:
        v = fn(*args)
    except Exception as e:  # noqa: BLE001 - the error is the outcome compared
        return ("raised", type(e), str(e))
    if isinstance(v, jinja2.Undefined):
        return ("undefined", type(v), v._undefined_name, v._undefined_obj is args[-2], v._undefined_hint,
                v._undefined_exception)
    return ("value", v)


def _same(a, b) -> bool:
    if a[0] == "value" and b[0] == "value":
        x, y = a[1], b[1]
        if callable(x) and callable(y):   # bound methods are made anew at each access
            return getattr(x, "__self__", None) is getattr(y, "__self__", None) and \
                getattr(x, "__name__", None) == getattr(y, "__name__", None)
        return x is y or x == y
    return a == b


NAMES = ["content", "role", "items", "keys", "get", "update", "pop", "copy", "values", "setdefault", "clear",
         "split", "strip", "startswith", "format", "format_map", "upper", "index0", "index", "last", "first",
         "length", "cycle", "changed", "revindex", "x", "multi_step_tool", "_x", "__class__", "__dict__", "mro",
         "__init__", "nope", "", "f", "g", "h"]


def _objects():
    env = R.make_environment()
    loop_tpl = env.from_string("{% for m in xs %}{{ grab(loop) }}{% endfor %}")
    loops = []
    loop_tpl.render(xs=[1, 2, 3], grab=loops.append)
    ns = R._TemplateNamespace(x=1, multi_step_tool=True, items="i", split="s")
    ns2 = R._TemplateNamespace(f="a{}".format, g=len, h=[1, 2])
    return env, [
        {"content": "hi", "role": "user"}, {"items": 1, "keys": "k", "get": None, "pop": [1], "content": None},
        {}, "hello world", "", "a{}b", R._plain({"x": {"y": [1]}}), ns, ns2, loops[0], loops[-1], [1, 2], (1,), 3,
        None, markupsafe.Markup("<b>"),
    ]


@pytest.mark.parametrize("name", NAMES)
def test_getattr_fast_paths_are_the_sandboxs_answers(name):
    env, objs = _objects()
    for obj in objs:
        fast = _outcome(env.getattr, obj, name)
        plain = _outcome(lambda o, n: ImmutableSandboxedEnvironment.getattr(env, o, n), obj, name)
        assert _same(fast, plain), (type(obj).__name__, name, fast, plain)


def test_a_stored_str_format_is_still_sandboxed():
    """A namespace holding ``str.format`` is not a plain value: the sandbox wraps it (its formatter refuses "_")."""
    env = R.make_environment()
    out = env.from_string('{% set ns = namespace(f="{0.__class__}".format) %}{{ ns.f(1) }}')
    with pytest.raises(SecurityError):
        out.render()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, width=32) |
    st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=5), kids, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(json_values, st.sampled_from([None, 0, 2, 4, "\t"]), st.sampled_from([None, (",", ":"), [", ", ": "]]),
       st.booleans(), st.booleans(), st.booleans())
def test_tojson_is_json_dumps(value, indent, separators, sort_keys, ensure_ascii, in_scope):
    want = json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    if in_scope:
        with R.same_arguments():
            got = [R._tojson(value, ensure_ascii, indent, separators, sort_keys) for _ in range(2)]
    else:
        got = [R._tojson(value, ensure_ascii, indent, separators, sort_keys) for _ in range(2)]
    assert got == [want, want]


def test_tojson_of_one_object_in_several_forms():
    """In one scope, the same object printed with each indent, separator and key order gets each one's text."""
    value = {"b": [1, {"c": "ü"}], "a": None}
    forms = [(False, None, None, False), (False, 2, None, False), (False, 4, None, False), (True, 4, None, False),
             (False, 4, (",", ":"), False), (False, 4, None, True), (False, "\t", None, False)]
    with R.same_arguments():
        for _ in range(2):
            for ensure_ascii, indent, separators, sort_keys in forms:
                assert R._tojson(value, ensure_ascii, indent, separators, sort_keys) == json.dumps(
                    value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def test_tojson_errors_are_json_dumps_errors():
    for bad in ({"a": object()}, [float("nan")], {"k": {1, 2}}):
        try:
            json.dumps(bad, indent=2)
            want = None
        except (TypeError, ValueError) as e:
            want = (type(e), str(e))
        try:
            R._tojson(bad, indent=2)
            got = None
        except (TypeError, ValueError) as e:
            got = (type(e), str(e))
        assert got == want


def _rows():
    from tmplcheck.assets import upstream_templates_dir

    up = upstream_templates_dir()
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather.", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    call = {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function": {
        "name": "get_weather", "arguments": {"city": "Oslo"}}}]}
    tool_row = [{"role": "user", "content": "Weather in Oslo?"}, call,
                {"role": "tool", "tool_call_id": "c1", "content": '{"t": 3}'},
                {"role": "assistant", "content": "It is 3 degrees."}]
    think_row = [{"role": "user", "content": "2+2?"},
                 {"role": "assistant", "content": "4.", "reasoning_content": "Add them."},
                 {"role": "user", "content": "And 3+3?"},
                 {"role": "assistant", "content": "6.", "reasoning_content": "Add again."}]
    return [(up / "meta-llama-Llama-3.1-8B-Instruct.jinja", tool_row, {"tools": tools}),
            (up / "Qwen-Qwen3-0.6B.jinja", think_row, {}),
            (up / "Qwen-Qwen3-0.6B.jinja", tool_row, {"tools": tools}),
            (up / "mistralai-Mistral-Nemo-Instruct-2407.jinja", tool_row, {"tools": tools}),
            (up / "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja", think_row, {})]


@pytest.mark.parametrize("k", range(5))
def test_renders_sharing_arguments_are_the_renders_alone(k):
    from tmplcheck.templates import load_template

    path, row, kw = _rows()[k]
    if not path.is_file():
        pytest.skip(f"{path.name} is not in this llama-cpp-python sdist")
    t = load_template(str(path))
    cases = [(n, agp) for n in range(len(row) + 1) for agp in (False, True)]

    def render_all():
        out = []
        for n, agp in cases:
            try:
                out.append(t.render(row[:n], add_generation_prompt=agp, **kw))
            except Exception as e:  # noqa: BLE001
                out.append((type(e).__name__, str(e)))
        return out

    alone = render_all()
    with R.same_arguments():
        shared = render_all()
        again = render_all()
    assert shared == alone == again
    assert any(isinstance(x, str) for x in alone)


def test_errors_unshown_are_the_same_errors_without_their_line():
    from tmplcheck.templates import load_template

    t = load_template(str(_rows()[0][0]))
    with pytest.raises(R.TemplateRenderError) as shown:
        t.render([], tools=_rows()[0][2]["tools"])
    with R.errors_unshown(), pytest.raises(R.TemplateRenderError) as quiet:
        t.render([], tools=_rows()[0][2]["tools"])
    assert (str(quiet.value), quiet.value.kind) == (str(shown.value), shown.value.kind)
    assert shown.value.lineno is not None
