"""``tmplcheck.exiting.leave``: the console script's end keeps a normal exit's effects (status, exit handlers,
threads joined, buffered output written) while skipping the interpreter's teardown."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = r"""
import atexit, sys, threading, time
from tmplcheck.exiting import leave

atexit.register(lambda: print("exit handler ran", flush=True))

def late():
    time.sleep(0.3)
    print("thread finished")

threading.Thread(target=late).start()
sys.stdout.write("buffered " * 2000 + "\n")   # more than one write of the pipe's buffer, not flushed
leave(CODE)
"""


@pytest.mark.parametrize("full", ["0", "1"])
@pytest.mark.parametrize("code,status", [(0, 0), (1, 1), (2, 2), (None, 0), ("'a message'", 1)])
def test_leave_keeps_what_a_normal_exit_does(code, status, full):
    env = {"TMPLCHECK_FULL_EXIT": full, "PATH": ""}
    r = subprocess.run([sys.executable, "-c", SCRIPT.replace("CODE", str(code))], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == status, r.stderr
    out = r.stdout.splitlines()
    assert out[0].split() == ["buffered"] * 2000
    assert out[1:] == ["thread finished", "exit handler ran"]   # the thread joined before the handlers, as usual
    if code == "'a message'":
        assert r.stderr.strip() == "a message"


def test_the_console_script_ends_through_leave(tmp_path):
    """The installed command's status and output are the same with the normal exit."""
    import shutil

    exe = shutil.which("tmplcheck", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe, "the console script is installed next to this interpreter"
    fast = subprocess.run([exe, "fixtures/inputs/planted.jsonl", "--format", "json"], capture_output=True, text=True,
                          timeout=300)
    full = subprocess.run([exe, "fixtures/inputs/planted.jsonl", "--format", "json"], capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "TMPLCHECK_FULL_EXIT": "1"})
    assert fast.returncode == full.returncode == 1
    import json

    a, b = json.loads(fast.stdout), json.loads(full.stdout)
    assert a["findings"] == b["findings"] and len(a["findings"]) > 3
