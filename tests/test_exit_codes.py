"""`render` and `show` exit as the gate does: 1 when the template refuses the conversation (its own
raise_exception: the gate's T003), 2 only for usage errors and tool failures. Run through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

FIX = Path(__file__).resolve().parent.parent / "fixtures"
SYSTEM_ROW = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Capital of France?"},
              {"role": "assistant", "content": "Paris."}]


def tmplcheck(*args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tmplcheck", *map(str, args)], input=stdin, capture_output=True,
                          text=True)


def test_render_refused_by_the_template_is_exit_1():
    r = tmplcheck("render", "-t", "gemma", "-m", "-", stdin=json.dumps(SYSTEM_ROW))
    assert r.returncode == 1, r.stderr
    assert r.stdout == "" and "the template refused this conversation" in r.stderr and "[T003]" in r.stderr
    assert "System role not supported" in r.stderr


def test_render_usage_and_tool_failures_stay_exit_2(tmp_path):
    assert tmplcheck("render", "-t", "gemma", "-m", tmp_path / "nope.json").returncode == 2
    assert tmplcheck("render", "-t", "no-such-template-xyz", "-m", "-", stdin="[]").returncode == 2
    ok = tmplcheck("render", "-t", "gemma", "-m", "-", stdin=json.dumps(SYSTEM_ROW[1:]))
    assert ok.returncode == 0 and "<start_of_turn>user" in ok.stdout


def test_show_refused_by_the_template_is_exit_1():
    r = tmplcheck("show", FIX / "templates" / "gemma_system.jsonl", "--line", "2", "-t", "gemma", "-k", "gemma-4")
    assert r.returncode == 1, r.stderr
    assert "gemma_system.jsonl:2: the template refused this conversation" in r.stderr and "[T003]" in r.stderr
    r = tmplcheck("show", FIX / "templates" / "gemma_system.jsonl", "--line", "9", "-t", "gemma", "-k", "gemma-4")
    assert r.returncode == 2 and "no row at line 9" in r.stderr


def test_show_unreadable_row_is_exit_1():
    r = tmplcheck("show", FIX / "dataset" / "invalid_json.jsonl", "--line", "2", "-k", "llama-3")
    assert r.returncode == 1 and "holds no readable conversation" in r.stderr and "D001" in r.stderr
