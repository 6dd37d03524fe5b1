"""`tmplcheck render`: exactly the rendered text on stdout, both renderers; bad input is one sentence, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi "}]


def run(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "tmplcheck", "render", *map(str, args)], capture_output=True,
                          cwd=ROOT, input=stdin.encode() if isinstance(stdin, str) else stdin)


@pytest.fixture
def conv_file(tmp_path):
    p = tmp_path / "conv.json"
    p.write_text(json.dumps(CONV))
    return p


def test_llamacpp_builtin_name_exact_bytes(conv_file):
    r = run("--template", "llama3", "--messages", conv_file, "--renderer", "llamacpp", "--add-generation-prompt")
    assert r.returncode == 0, r.stderr
    assert r.stdout == (b"<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                        b"<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                        b"<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert r.stderr == b""


def test_llamacpp_from_a_template_file_uses_detection_and_stdin(tmp_path):
    tpl = tmp_path / "t.jinja"
    tpl.write_text("{% for m in messages %}<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>\n{% endfor %}")
    r = run("-t", tpl, "-m", "-", "--renderer", "llamacpp", "--no-generation-prompt",
            stdin=json.dumps({"messages": CONV}))
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"  # gemma folds the system


def test_hf_renderer_prints_the_template_text(conv_file):
    from tmplcheck.templates import load_template

    expected = load_template("chatml").render(CONV, add_generation_prompt=True)
    r = run("--template", "chatml", "--messages", conv_file, "--add-generation-prompt")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == expected and expected.endswith("<|im_start|>assistant\n")
    # like apply_chat_template, no generation prompt unless asked (--no-generation-prompt stays accepted)
    for extra in ((), ("--no-generation-prompt",)):
        r = run("--template", "chatml", "--messages", conv_file, *extra)
        assert r.returncode == 0, r.stderr
        assert r.stdout.decode() == load_template("chatml").render(CONV)


def test_hf_bos_token_override(tmp_path, conv_file):
    tpl = tmp_path / "t.jinja"
    tpl.write_text("{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{{ eos_token }}{% endfor %}")
    r = run("-t", tpl, "-m", conv_file, "--bos-token", "<B>", "--eos-token", "<E>", "--no-generation-prompt")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == "<B>[system]Be brief.<E>[user]Hi <E>"


def test_sharegpt_messages_are_accepted(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}))
    r = run("-t", "chatml", "-m", p, "--renderer", "llamacpp", "--no-generation-prompt")
    assert r.stdout.decode() == "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n"


@pytest.mark.parametrize("payload,needle", [
    ("[{\"role\": \"user\", \"content\": \"a\"}", "invalid JSON at line 1"),
    ("{\"foo\": 1}", "expected a list of messages"),
    ("[]", "the conversation is empty"),
    ("[\"hi\"]", "message 0 is not an object"),
    ("[{\"role\": \"user\", \"content\": 3}]", "message 0 content must be a string"),
    ("[{\"content\": \"x\"}]", "message 0 has no role string"),
])
def test_bad_input_is_one_clear_sentence_exit_2(payload, needle):
    r = run("-t", "chatml", "-m", "-", stdin=payload)
    assert r.returncode == 2
    assert r.stdout == b""
    assert needle in r.stderr.decode()


def test_missing_file_unknown_template_and_unsupported(conv_file, tmp_path):
    r = run("-t", "chatml", "-m", tmp_path / "nope.json")
    assert r.returncode == 2 and b"no such file" in r.stderr
    r = run("-t", "no-such-template-xyz", "-m", conv_file)
    assert r.returncode == 2 and r.stdout == b""
    tpl = tmp_path / "odd.jinja"
    tpl.write_text("{% for m in messages %}<<{{ m.role }}>>{{ m.content }}{% endfor %}")
    r = run("-t", tpl, "-m", conv_file, "--renderer", "llamacpp")
    assert r.returncode == 2 and r.stdout == b""
    assert b"does not recognise" in r.stderr


def test_list_llamacpp_names():
    r = run("--list-llamacpp")
    names = r.stdout.decode().split()
    assert r.returncode == 0 and "llama3" in names and "mistral-v7-tekken" in names and len(names) == 55
