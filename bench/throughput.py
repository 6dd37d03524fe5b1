#!/usr/bin/env python
"""Throughput of the token gate against the loops users write today, on the same generated rows in one run, at three
row lengths.

    .venv/bin/python bench/throughput.py [--rows 20000] [--lengths short,medium,long] [--repeat 2] [--jobs 2]
                                         [--memory-rows 100000 1000000] [--memory-length short]

Row sets (``--lengths``), ShareGPT rows made from one word list, deterministic: ``short`` ~45 tokens a row (one
question and a one-line answer, like the tweets of the seed's data), ``medium`` ~150, ``long`` ~500 (1-3 turns of up
to 300 words; the set this script measured before the lengths existed). For each set, on the Llama 3 vocabulary:

(a) naive:     transformers' PreTrainedTokenizerFast, ``tokenizer.apply_chat_template(conv, tokenize=True)`` per
               row, timed from loading the tokenizer;
(d) map:       what a power user writes: ``datasets.Dataset.from_json`` on the same file and
               ``.map(batched=True, num_proc=--jobs)`` calling ``apply_chat_template(batch, tokenize=True)`` on each
               batch, in a fresh process, timed from loading the tokenizer (after the imports) to the mapped dataset;
(b) tmplcheck: the full gate on the JSONL file with every check on (D, T, X, K, M codes; llama.cpp ids, prompt
               renders and the generation-marker mask on their samples), ``--template llama-3 --tokenizer llama-3
               --max-length 4096``, process pool over ``--jobs`` cores, in a fresh Python process as the command
               line runs it, timed from starting that process (imports, loading the template, tokenizer and
               llama.cpp vocabulary) to the verdict and the process's end (``tmplcheck.exiting.leave``, as the
               command line ends);
(c) floor:     the Rust tokenizer's own ``encode_batch`` on the already rendered texts (loaded tokenizer; its own
               thread pool over every core).

Each is run ``--repeat`` times, interleaved (a, d, b, c, a, d, b, c, ...), and the best run of each counts: the
machine's other load only ever slows a run down. Targets, at every length: (b)/(a) >= 2.5, (b)/(d) >= 1.5,
(b)/(c) >= 0.8. Then the peak memory (max RSS of the gate process and of its largest worker) of gate runs over
``--memory-rows`` rows of the ``--memory-length`` set, each in its own subprocess, which must not grow with the
number of rows.
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

#: row set -> (share of rows with a system prompt, min and max user/assistant pairs, question words min/max,
#: answer words min/max); ~45, ~150 and ~500 tokens a row with the Llama 3 template and vocabulary
LENGTHS = {"short": (0.2, 1, 1, 3, 12, 5, 18), "medium": (0.4, 1, 2, 5, 25, 20, 80),
           "long": (0.5, 1, 3, 5, 40, 20, 300)}
TARGETS = {"naive": 2.5, "map": 1.5, "floor": 0.8}


def make_rows(n: int, seed: int = 0, length: str = "long"):
    """Deterministic ShareGPT rows of one row set (see ``LENGTHS``): optional system, user/assistant pairs."""
    sys_share, pmin, pmax, qmin, qmax, amin, amax = LENGTHS[length]
    rnd = random.Random(seed)
    for i in range(n):
        conv = []
        if rnd.random() < sys_share:
            conv.append({"from": "system", "value": "You are a helpful assistant. Answer concisely."})
        for _ in range(rnd.randint(pmin, pmax)):
            q = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(qmin, qmax))) + f"? (#{i})"
            a = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(amin, amax))) + "."
            conv += [{"from": "human", "value": q.capitalize()}, {"from": "gpt", "value": a.capitalize()}]
        yield {"conversations": conv}


def write_rows(path: Path, n: int, length: str = "long") -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in make_rows(n, length=length):
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


ROLE = {"system": "system", "human": "user", "gpt": "assistant"}


def as_messages(row) -> list[dict]:
    return [{"role": ROLE[m["from"]], "content": m["value"]} for m in row["conversations"]]


def hf_tokenizer():
    """transformers' fast tokenizer on the Llama 3 vocabulary with the llama-3 template, as a user loads it."""
    from transformers import PreTrainedTokenizerFast

    from tmplcheck.templates import load_template
    from tmplcheck.validator.tokenizer import load_tokenizer

    hf = PreTrainedTokenizerFast(tokenizer_file=str(load_tokenizer("llama-3").hf_dir / "tokenizer.json"),
                                 bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    hf.chat_template = load_template("llama-3").source
    return hf


def gate(path: Path, jobs: int):
    from tmplcheck.validator.gate import GateOptions, run_gate
    from tmplcheck.validator.stages import StageConfig, build_stages

    stages = build_stages(StageConfig(template="llama-3", tokenizer="llama-3", max_length=4096,
                                      extra={"jobs": jobs}))
    return run_gate(path, GateOptions(stages=stages))


def gate_child(path: str, jobs: int) -> None:
    """Subprocess body of (b): the gate on ``path`` in a fresh process, as the command line runs it; prints what the
    report needs."""
    from tmplcheck.exiting import leave

    res = gate(Path(path), jobs)
    tk = res.summary["tokens"]
    print(json.dumps({"findings": len(res.findings), "summary": {k: tk.get(k) for k in (
        "tokens", "rows_encoded", "regular_rows", "llamacpp_rows_compared", "prefix_rows_rendered")}}))
    leave(0)   # the command line's own end (tmplcheck.cli.main)


def map_child(path: str, jobs: int) -> None:
    """Subprocess body of (d): ``datasets.map(batched=True, num_proc=jobs)`` with ``apply_chat_template`` on the
    file, from loading the tokenizer (after the imports) to the mapped dataset; prints seconds and tokens."""
    import datasets
    import transformers  # noqa: F401 - imported before the clock starts, as the gate's imports are not

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        hf = hf_tokenizer()

        def encode(batch):
            convs = [[{"role": ROLE[m["from"]], "content": m["value"]} for m in c] for c in batch["conversations"]]
            return {"input_ids": hf.apply_chat_template(convs, tokenize=True, return_dict=False)}

        ds = datasets.Dataset.from_json(path, cache_dir=cache)
        out = ds.map(encode, batched=True, num_proc=jobs, remove_columns=ds.column_names)
        dt = time.perf_counter() - t
        n = sum(len(x) for x in out.data.column("input_ids").to_pylist())
    print(json.dumps({"seconds": dt, "tokens": n, "rows": len(out)}))


def memory_child(n: int, jobs: int, length: str) -> None:
    """Subprocess body: generate n rows into a temp file, run the gate, print rows and peak RSS (self + workers)."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "rows.jsonl"
        write_rows(p, n, length)
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


def measure(length: str, rows: int, jobs: int, repeat: int) -> dict:
    """(a), (d), (b), (c) on one row set, interleaved ``repeat`` times; the best of each."""
    from tmplcheck.templates import load_template
    from tmplcheck.validator.tokenizer import load_tokenizer

    tok = load_tokenizer("llama-3")
    tmpl = load_template("llama-3")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "rows.jsonl"
        write_rows(path, rows, length)
        convs = [as_messages(json.loads(line)) for line in path.open(encoding="utf-8")]
        texts = [tmpl.render(c) for c in convs]

        def run_a():
            # the loop users write today, from loading the tokenizer to the last row
            t = time.perf_counter()
            hf = hf_tokenizer()
            n = 0
            for c in convs:
                n += len(hf.apply_chat_template(c, tokenize=True, return_dict=False))
            return time.perf_counter() - t, n

        def run_d():
            out = run_child("--map-child", str(path), "--jobs", str(jobs))
            return out["seconds"], out["tokens"]

        def run_b():
            # the gate with every check on, in a fresh process as the command line runs it: from starting Python
            # (imports, loading the template, tokenizer and llama.cpp vocabulary) to the verdict; CPU time of that
            # process and its workers too (on a shared machine it varies less than wall time)
            c = cpu_seconds()
            t = time.perf_counter()
            out = run_child("--gate-child", str(path), "--jobs", str(jobs))
            return time.perf_counter() - t, cpu_seconds() - c, out

        def run_c():
            # the Rust tokenizer's encode_batch on the already rendered texts (tokenizer loaded, rendering not timed)
            t = time.perf_counter()
            encs = tok.backend.encode_batch(texts, add_special_tokens=False)
            return time.perf_counter() - t, sum(len(e.ids) for e in encs)

        ra, rd, rb, rc = [], [], [], []
        for _ in range(repeat):
            ra.append(run_a())
            rd.append(run_d())
            rb.append(run_b())
            rc.append(run_c())
    tb, cb, res = min(rb, key=lambda r: r[0])
    return {"length": length, "rows": rows, "a": min(ra), "d": min(rd), "b": (tb, res["summary"]["tokens"]),
            "c": min(rc), "cpu_b": cb, "res": res, "all": {"a": [r[0] for r in ra], "d": [r[0] for r in rd],
                                                           "b": [r[0] for r in rb], "c": [r[0] for r in rc]}}


def report(m: dict) -> None:
    rows = m["rows"]
    print(f"\n{m['length']}: {rows} rows, best of {len(m['all']['a'])} interleaved runs each")
    names = {"a": "(a) apply_chat_template(tokenize=True) loop", "d": "(d) datasets.map(batched, num_proc)",
             "b": "(b) tmplcheck gate, every check on", "c": "(c) tokenizers encode_batch (floor)"}
    for k in "adbc":
        secs, toks = m[k]
        print(f"  {names[k]:<46} {secs:8.2f} s  {rows / secs:9.0f} rows/s  {toks / secs:11.0f} tokens/s")
    print("  all runs (s): " + "  ".join(f"{k} {[round(x, 2) for x in m['all'][k]]}" for k in "adbc"))
    tk, res = m["res"]["summary"], m["res"]
    print(f"  tokens a row: {tk['tokens'] / rows:.0f} (a={m['a'][1]} d={m['d'][1]} b={tk['tokens']} c={m['c'][1]}); "
          f"findings: {res['findings']}; regular rows: {tk.get('regular_rows')}, full checks: "
          f"{tk['rows_encoded'] - (tk.get('regular_rows') or 0)} (llama.cpp ids compared on "
          f"{tk.get('llamacpp_rows_compared')}, prompts rendered on {tk.get('prefix_rows_rendered')})")
    print(f"  (b) CPU time, gate process + workers: {m['cpu_b']:.2f} s = {m['cpu_b'] / rows * 1e6:.0f} us/row "
          f"(wall {m['b'][0] / rows * 1e6:.0f} us/row)")


def table(ms: list[dict]) -> None:
    def mark(x, target):
        return f"**{x:.2f}x** {'PASS' if x >= target else 'MISS'}"

    print("\n| rows | tokens a row | (a) naive `apply_chat_template` loop | (d) `datasets.map(batched, num_proc)` "
          "| (b) tmplcheck (every check) | (c) `encode_batch` floor | (b)/(a), target >= 2.5x "
          "| (b)/(d), target >= 1.5x | (b)/(c), target >= 0.8x |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m in ms:
        n = m["rows"]
        ta, td, tb, tc = m["a"][0], m["d"][0], m["b"][0], m["c"][0]
        print(f"| {m['length']} ({n}) | {m['res']['summary']['tokens'] / n:.0f} | {n / ta:,.0f} rows/s "
              f"| {n / td:,.0f} | {n / tb:,.0f} | {n / tc:,.0f} | {mark(ta / tb, TARGETS['naive'])} "
              f"| {mark(td / tb, TARGETS['map'])} | {mark(tc / tb, TARGETS['floor'])} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20000, help="rows timed for (a), (d), (b) and (c) at each length")
    ap.add_argument("--lengths", default="short,medium,long", help="row sets, comma-separated: short, medium, long")
    ap.add_argument("--memory-rows", type=int, nargs="*", default=[100_000, 1_000_000],
                    help="row counts for the peak-memory runs (each in a subprocess); none: skip them")
    ap.add_argument("--memory-length", default="short", choices=sorted(LENGTHS),
                    help="the row set of the peak-memory runs")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=2, help="interleaved runs of each; the best of each counts")
    ap.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--gate-child", help=argparse.SUPPRESS)
    ap.add_argument("--map-child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.gate_child:
        gate_child(a.gate_child, a.jobs)
        return
    if a.map_child:
        map_child(a.map_child, a.jobs)
        return
    if a.memory_child:
        memory_child(a.memory_child, a.jobs, a.memory_length)
        return
    lengths = [x.strip() for x in a.lengths.split(",") if x.strip()]
    bad = [x for x in lengths if x not in LENGTHS]
    if bad:
        ap.error(f"unknown row set(s) {', '.join(bad)}; known: {', '.join(LENGTHS)}")

    print(f"Llama 3 vocabulary and template, {os.cpu_count()} cores, jobs={a.jobs}, {a.rows} rows a set")
    ms = []
    for length in lengths:
        ms.append(measure(length, a.rows, a.jobs, a.repeat))
        report(ms[-1])
    table(ms)

    peaks = []
    for n in a.memory_rows:
        m = run_child("--memory-child", str(n), "--jobs", str(a.jobs), "--memory-length", a.memory_length)
        peaks.append(max(m["max_rss_kib"], m["max_rss_workers_kib"]))
        print(f"peak memory at {n:>9} {a.memory_length} rows: gate {m['max_rss_kib'] / 1024:7.1f} MiB, largest worker "
              f"{m['max_rss_workers_kib'] / 1024:7.1f} MiB ({m['seconds']:.0f} s, {m['rows'] / m['seconds']:.0f} "
              f"rows/s)")
    if len(peaks) >= 2:
        growth = peaks[-1] / peaks[0]
        print(f"peak memory growth {a.memory_rows[0]} -> {a.memory_rows[-1]} rows: {growth:.2f}x "
              f"({'flat' if growth < 1.25 else 'GROWS'})")


if __name__ == "__main__":
    main()
