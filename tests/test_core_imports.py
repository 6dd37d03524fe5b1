"""The validator core stays light: no torch, no transformers on the gate's import path."""

import subprocess
import sys


def test_gate_imports_no_torch():
    code = ("import sys, tmplcheck.cli, tmplcheck.validator.gate, tmplcheck.validator.report;"
            "bad = [m for m in ('torch', 'transformers', 'peft', 'trl') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
