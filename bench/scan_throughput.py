"""Scan throughput: write N synthetic generations (clean and with every kind of artifact) and time the scan.

    .venv/bin/python bench/scan_throughput.py [--rows 100000] [--template llama-3] [--tokenizer llama-3]

Prints rows/s for the whole path (read JSONL, parse, scan, rates) and for the checks alone.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

SYSTEM = "Write a tweet in all capital letters."
WORDS = ("CATS", "DOGS", "LOVE", "BEST", "EVER", "HATE", "THE", "SUN", "RAIN", "COFFEE", "MONDAY", "PIZZA")


def synth_rows(n: int, seed: int = 0):
    rng = random.Random(seed)
    tails = [
        "<|eot_id|>", "", "system\n\nWrite a tweet in all capital letters.",
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nWrite a tweet in all capital letters.",
        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nThe topic is: rain", "\nuser\n\nThe topic is: sun",
        "<|im_end|>\n<|im_start|>user\nmore", "<|start_header_id|>assistant<|end_header_id|>\n\nAGAIN",
    ]
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 30)))
        k = rng.randrange(len(tails) * 2)
        tail = tails[k] if k < len(tails) else "<|eot_id|>"
        row = {"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"The topic is: {i}"}],
               "output": text + tail, "finish_reason": "stop" if "eot" in tail or not tail else "length"}
        if i % 3 == 0:
            row["output_ids"] = [rng.randrange(1000, 128000) for _ in range(12)] + ([128009] if "eot" in tail else [])
        yield row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--template", default="llama-3")
    ap.add_argument("--tokenizer", default=None, help="adds the id checks (stop ids, BOS id)")
    a = ap.parse_args(argv)

    from tmplcheck.artifacts.patterns import patterns_for
    from tmplcheck.artifacts.scan import parse_generation, scan_file, scan_generation
    from tmplcheck.templates import load_template

    tok = None
    if a.tokenizer:
        from tmplcheck.validator.tokenizer import load_tokenizer

        tok = load_tokenizer(a.tokenizer)
    pats = patterns_for(load_template(a.template).meta, tokenizer=tok)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "gens.jsonl"
        rows = list(synth_rows(a.rows))
        with open(path, "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")
        size = path.stat().st_size
        t0 = time.perf_counter()
        res = scan_file(path, pats)
        t1 = time.perf_counter()
        gens = [parse_generation(r, path="x", line=i)[0] for i, r in enumerate(rows, 1)]
        t2 = time.perf_counter()
        n = sum(len(scan_generation(g, pats)) for g in gens)
        t3 = time.perf_counter()
    art = res.summary["artifacts"]
    print(f"rows: {a.rows}  file: {size / 1e6:.1f} MB  findings: {len(res.findings)} (checks alone: {n})")
    print(f"scan_file (read + parse + scan + rates): {t1 - t0:.2f} s  {a.rows / (t1 - t0):,.0f} rows/s")
    print(f"checks alone: {t3 - t2:.2f} s  {a.rows / (t3 - t2):,.0f} rows/s")
    print("rates: " + ", ".join(f"{c} {r:.1%}" for c, r in art["rates"].items() if r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
