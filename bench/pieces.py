#!/usr/bin/env python
"""The gate's pre-token encoder (``validator/pieces.py``) against the Rust tokenizer's ``encode_batch_fast`` on one
core, on the same texts in one run, and whether their ids are equal.

    RAYON_NUM_THREADS=1 .venv/bin/python bench/pieces.py [--rows 50000] [--tokenizer llama-3]

Texts: the rows of ``bench/throughput.py`` (short, medium, long) rendered with the Llama 3 template, then real
English prose: the paragraphs of the ``.md``/``.rst``/licence files installed in this environment (a cold table:
each text set starts with an empty one). Best of two runs each.
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def real_paragraphs(limit: int) -> list[str]:
    site = Path(sys.prefix) / "lib"
    files = sorted(glob.glob(f"{site}/**/*.md", recursive=True) + glob.glob(f"{site}/**/*.rst", recursive=True)
                   + glob.glob(f"{site}/**/LICENSE*", recursive=True))
    paras = []
    for f in files:
        try:
            paras += [p for p in Path(f).read_text(encoding="utf-8").split("\n\n") if len(p) > 40]
        except (OSError, UnicodeDecodeError):
            continue
    random.Random(0).shuffle(paras)
    return paras[:limit]


def best(fn, repeat: int = 2) -> tuple[float, object]:
    out, t_best = None, float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        t_best = min(t_best, time.perf_counter() - t)
    return t_best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=50000)
    ap.add_argument("--tokenizer", default="llama-3")
    a = ap.parse_args()
    import throughput as T

    from tmplcheck.templates import load_template
    from tmplcheck.validator.pieces import PieceEncoder
    from tmplcheck.validator.tokenizer import load_tokenizer

    backend = load_tokenizer(a.tokenizer).backend
    template = load_template("llama-3")
    sets = {length: [template.render(T.as_messages(r)) for r in T.make_rows(a.rows, length=length)]
            for length in ("short", "medium", "long")}
    sets["real prose"] = real_paragraphs(a.rows)
    print(f"{a.tokenizer}, RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'unset')}")
    print("| texts | count | tokens a text | encode_batch_fast | pre-token encoder | speed-up | ids equal | "
          "pre-tokens in the table |")
    print("|---|---|---|---|---|---|---|---|")
    for name, texts in sets.items():
        t_ref, ref = best(lambda: [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)])

        def fresh():
            enc = PieceEncoder.of(backend)     # a cold table every run
            return enc, enc.encode(texts)

        t_new, (enc, got) = best(fresh)
        n = sum(map(len, ref))
        print(f"| {name} | {len(texts)} | {n / len(texts):.0f} | {t_ref:.2f} s | {t_new:.2f} s | "
              f"{t_ref / t_new:.1f}x | {got == ref} | {len(enc._table)} |")


if __name__ == "__main__":
    main()
