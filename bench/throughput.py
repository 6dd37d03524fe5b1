#!/usr/bin/env python
"""Throughput of the token gate against the loop users write today, on the same generated rows in one run.

    .venv/bin/python bench/throughput.py [--rows 20000] [--memory-rows 100000 1000000] [--jobs 2]

(a) naive:     transformers' PreTrainedTokenizerFast on the Llama 3 vocabulary,
               ``tokenizer.apply_chat_template(conv, tokenize=True)`` per row, timed from loading the tokenizer;
(b) tmplcheck: the full gate on the JSONL file with every check on (D, T, X, K, M codes; llama.cpp ids, prompt
               renders and the generation-marker mask on their samples), ``--template llama-3 --tokenizer llama-3
               --max-length 4096``, process pool over ``--jobs`` cores, in a fresh Python process as the command
               line runs it, timed from starting that process (imports, loading the template, tokenizer and
               llama.cpp vocabulary) to the verdict;
(c) floor:     the Rust tokenizer's own ``encode_batch`` on the already rendered texts (loaded tokenizer).

Each is run ``--repeat`` times, interleaved (a, b, c, a, b, c, ...), and the best run of each counts: the machine's
other load only ever slows a run down.

Prints rows/s and tokens/s of each, the ratios (b)/(a) (target >= 2.5) and (b)/(c) (target >= 0.8), and the peak
memory (max RSS of the gate process and its workers) of gate runs over ``--memory-rows`` rows, each in its own
subprocess, which must not grow with the number of rows.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the quick brown fox jumps over the lazy dog while a model learns to answer questions about "
         "Python, Rust, databases, cooking, history and travel; it explains, lists steps, writes code, "
         "and ends politely").split()


def make_rows(n: int, seed: int = 0):
    """Deterministic ShareGPT rows: optional system, 1-3 user/assistant pairs, answers of 20-300 words."""
    rnd = random.Random(seed)
    for i in range(n):
        conv = []
        if rnd.random() < 0.5:
            conv.append({"from": "system", "value": "You are a helpful assistant. Answer concisely."})
        for _ in range(rnd.randint(1, 3)):
            q = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(5, 40))) + f"? (#{i})"
            a = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(20, 300))) + "."
            conv += [{"from": "human", "value": q.capitalize()}, {"from": "gpt", "value": a.capitalize()}]
        yield {"conversations": conv}


def write_rows(path: Path, n: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in make_rows(n):
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def as_messages(row) -> list[dict]:
    role = {"system": "system", "human": "user", "gpt": "assistant"}
    return [{"role": role[m["from"]], "content": m["value"]} for m in row["conversations"]]


def gate(path: Path, jobs: int):
    from tmplcheck.validator.gate import GateOptions, run_gate
    from tmplcheck.validator.stages import StageConfig, build_stages

    stages = build_stages(StageConfig(template="llama-3", tokenizer="llama-3", max_length=4096,
                                      extra={"jobs": jobs}))
    return run_gate(path, GateOptions(stages=stages))


def gate_child(path: str, jobs: int) -> None:
    """Subprocess body of (b): the gate on ``path`` in a fresh process, as the command line runs it; prints what the
    report needs."""
    res = gate(Path(path), jobs)
    tk = res.summary["tokens"]
    print(json.dumps({"findings": len(res.findings), "summary": {k: tk.get(k) for k in (
        "tokens", "rows_encoded", "regular_rows", "llamacpp_rows_compared", "prefix_rows_rendered")}}))


def memory_child(n: int, jobs: int) -> None:
    """Subprocess body: generate n rows into a temp file, run the gate, print rows and peak RSS (self + workers)."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "rows.jsonl"
        write_rows(p, n)
        t = time.perf_counter()
        res = gate(p, jobs)
        dt = time.perf_counter() - t
    own = peak_rss_kib()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"rows": res.summary["rows"], "seconds": dt, "max_rss_kib": own, "max_rss_workers_kib": kids,
                      "tokens": res.summary["tokens"]["tokens"]}))


def peak_rss_kib() -> int:
    """This process's peak resident set. VmHWM (Linux) belongs to the process's own address space; ``ru_maxrss``
    survives ``exec`` and would report the benchmark's own (large) process that started this one."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_child(*args: str) -> dict:
    """This script in a fresh Python process; its last printed line as JSON."""
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def cpu_seconds() -> float:
    """User + system CPU time of this process and its (waited-for) child processes so far."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20000, help="rows timed for (a), (b) and (c)")
    ap.add_argument("--memory-rows", type=int, nargs="*", default=[100_000, 1_000_000],
                    help="row counts for the peak-memory runs (each in a subprocess)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=2, help="interleaved runs of (a), (b), (c); the best of each counts")
    ap.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--gate-child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.gate_child:
        gate_child(a.gate_child, a.jobs)
        return
    if a.memory_child:
        memory_child(a.memory_child, a.jobs)
        return

    from tmplcheck.templates import load_template
    from tmplcheck.validator.tokenizer import load_tokenizer

    tok = load_tokenizer("llama-3")
    tmpl = load_template("llama-3")
    tok_file = str(tok.hf_dir / "tokenizer.json")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "rows.jsonl"
        write_rows(path, a.rows)
        convs = [as_messages(json.loads(line)) for line in path.open(encoding="utf-8")]
        texts = [tmpl.render(c) for c in convs]
        print(f"{a.rows} rows, {path.stat().st_size / 1e6:.1f} MB, Llama 3 vocabulary, {os.cpu_count()} cores, "
              f"jobs={a.jobs}, best of {a.repeat} interleaved runs each")

        def run_a():
            # the loop users write today, from loading the tokenizer to the last row
            from transformers import PreTrainedTokenizerFast

            t = time.perf_counter()
            hf = PreTrainedTokenizerFast(tokenizer_file=tok_file, bos_token="<|begin_of_text|>",
                                         eos_token="<|eot_id|>")
            hf.chat_template = tmpl.source
            loaded = time.perf_counter()
            n = 0
            for c in convs:
                n += len(hf.apply_chat_template(c, tokenize=True, return_dict=False))
            end = time.perf_counter()
            return end - t, end - loaded, n

        def run_b():
            # the gate with every check on, in a fresh process as the command line runs it: from starting Python
            # (imports, loading the template, tokenizer and llama.cpp vocabulary) to the verdict; CPU time of that
            # process and its workers too (on a shared machine it varies less than wall time)
            c = cpu_seconds()
            t = time.perf_counter()
            out = run_child("--gate-child", str(path), "--jobs", str(a.jobs))
            return time.perf_counter() - t, cpu_seconds() - c, out

        def run_c():
            # the Rust tokenizer's encode_batch on the already rendered texts (tokenizer loaded, rendering not timed)
            t = time.perf_counter()
            encs = tok.backend.encode_batch(texts, add_special_tokens=False)
            return time.perf_counter() - t, sum(len(e.ids) for e in encs)

        ra, rb, rc = [], [], []
        for _ in range(a.repeat):
            ra.append(run_a())
            rb.append(run_b())
            rc.append(run_c())
        ta, ta_loop, n_a = min(ra)
        tb, cb, res = min(rb, key=lambda r: r[0])
        tc, n_c = min(rc)
        tk = res["summary"]
        n_b = tk["tokens"]

    def line(name, secs, toks):
        print(f"  {name:<52} {secs:8.2f} s  {a.rows / secs:10.0f} rows/s  {toks / secs:12.0f} tokens/s")

    line("(a) apply_chat_template(tokenize=True) loop", ta, n_a)
    line("(b) tmplcheck gate, every check on", tb, n_b)
    line("(c) tokenizers encode_batch (floor)", tc, n_c)
    print(f"  all runs (s): a {[round(r[0], 2) for r in ra]}  b {[round(r[0], 2) for r in rb]}  "
          f"c {[round(r[0], 2) for r in rc]}; (a) without loading the tokenizer: {ta_loop:.2f} s")
    print(f"  tokens: a={n_a} b={n_b} c={n_c} ({n_b / a.rows:.0f} a row); findings: {res['findings']}; rows checked "
          f"as regular rows: "
          f"{tk.get('regular_rows')}, with the full checks: {tk['rows_encoded'] - tk.get('regular_rows', 0)} "
          f"(llama.cpp ids compared on {tk.get('llamacpp_rows_compared')}, prompts rendered on "
          f"{tk.get('prefix_rows_rendered')})")
    print(f"  (b) CPU time, gate process + workers: {cb:.2f} s = {cb / a.rows * 1e3:.2f} ms/row "
          f"(wall {tb / a.rows * 1e3:.2f} ms/row)")
    ba, bc = ta / tb, tc / tb
    print(f"speed-up (b)/(a): {ba:.2f}x  (target >= 2.5x)  {'OK' if ba >= 2.5 else 'BELOW TARGET'}")
    print(f"rate (b)/(c):     {bc:.2f}x  (target >= 0.8x)  {'OK' if bc >= 0.8 else 'BELOW TARGET'}")

    peaks = []
    for n in a.memory_rows:
        m = run_child("--memory-child", str(n), "--jobs", str(a.jobs))
        peaks.append(max(m["max_rss_kib"], m["max_rss_workers_kib"]))
        print(f"peak memory at {n:>9} rows: gate {m['max_rss_kib'] / 1024:7.1f} MiB, largest worker "
              f"{m['max_rss_workers_kib'] / 1024:7.1f} MiB ({m['seconds']:.0f} s, {m['rows'] / m['seconds']:.0f} "
              f"rows/s)")
    if len(peaks) >= 2:
        growth = peaks[-1] / peaks[0]
        print(f"peak memory growth {a.memory_rows[0]} -> {a.memory_rows[-1]} rows: {growth:.2f}x "
              f"({'flat' if growth < 1.25 else 'GROWS'})")


if __name__ == "__main__":
    main()
