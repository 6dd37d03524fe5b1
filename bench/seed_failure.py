#!/usr/bin/env python
"""The README's seed-failure table: runs ``examples/seed-failure/reproduce.py`` (the real check, train and report
commands on a tiny random-init Llama with the real Llama 3 vocabulary, CPU) and prints one table row per run: the
gate's verdict, the report's exit status, the artifact rates over the threshold and a greedy generation.

    .venv/bin/python bench/seed_failure.py [--full] [reproduce.py's options...]
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "examples" / "seed-failure" / "reproduce.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(argv if argv is not None else sys.argv[1:])
    print("\n| run | gate | `tmplcheck report` | artifact rates (greedy + sampled) | a greedy generation |")
    print("|---|---|---|---|---|")
    for name in ("correct", "broken"):
        r = out[name]
        gate = "approved" if name == "correct" else \
            f"exit {out['gate_broken_exit']} ({', '.join(out['gate_broken_codes'])})"
        rates = ", ".join(f"{c} {v * 100:.0f} %" for c, v in sorted(r["rates"].items()) if v) or "all 0 %"
        ex = (r["example"] or {}).get("output", "")
        print(f"| {name} | {gate} | exit {r['exit']} | {rates} | `{ex[:60]!s}` |")
    print(f"\nwall time: {out['wall_seconds']:.0f} s")
    return out


if __name__ == "__main__":
    main()
