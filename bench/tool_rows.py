#!/usr/bin/env python
"""The gate's rate on tool-use and reasoning rows next to plain rows, each against the naive loop, in one run.

    .venv/bin/python bench/tool_rows.py [--rows 5000] [--jobs 2] [--repeat 2]

Three generated datasets of the same size, each checked with the template people train them with:
  plain      ShareGPT rows (system, 1-3 exchanges)           the llama-3 built-in     Llama 3 vocabulary
  tools      OpenAI rows with tools, tool calls and results  Meta's Llama 3.1 template  Llama 3 vocabulary
  reasoning  OpenAI rows with reasoning_content, 1-2 turns   Qwen3's template         Qwen2 vocabulary
(the upstream templates from the llama-cpp-python sdist in the asset cache). For each:
(a) naive: transformers' ``apply_chat_template(messages, tools=..., tokenize=True)`` per row, timed from loading
    the tokenizer; (b) the gate with every check on, in a fresh process, timed from its start. Interleaved
    ``--repeat`` times, the best run of each counts. Prints rows/s, tokens a row and (b)/(a) per dataset.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("the quick brown fox jumps over the lazy dog while a model learns to answer questions about "
         "Python, Rust, databases, cooking, history and travel; it explains, lists steps, writes code").split()
CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Quito", "Perth", "Seoul"]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city"}},
                   "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Local time in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def _words(rnd, lo, hi) -> str:
    return " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(lo, hi))).capitalize()


def rows(kind: str, n: int, seed: int = 0):
    rnd = random.Random(seed)
    for i in range(n):
        if kind == "plain":
            conv = [{"from": "system", "value": "You are a helpful assistant."}] if rnd.random() < 0.5 else []
            for _ in range(rnd.randint(1, 3)):
                conv += [{"from": "human", "value": _words(rnd, 5, 40) + f"? (#{i})"},
                         {"from": "gpt", "value": _words(rnd, 20, 300) + "."}]
            yield {"conversations": conv}
        elif kind == "tools":
            city, fn = rnd.choice(CITIES), rnd.choice(["get_weather", "get_time"])
            msgs = [{"role": "user", "content": f"{_words(rnd, 3, 15)} in {city}? (#{i})"},
                    {"role": "assistant", "content": "", "tool_calls": [
                        {"id": f"call_{i}", "type": "function", "function": {"name": fn, "arguments": {"city": city}}}]},
                    {"role": "tool", "tool_call_id": f"call_{i}", "content": json.dumps({"value": rnd.randint(0, 40)})},
                    {"role": "assistant", "content": _words(rnd, 10, 120) + "."}]
            yield {"messages": msgs, "tools": TOOLS}
        else:
            msgs = []
            for _ in range(rnd.randint(1, 2)):
                msgs += [{"role": "user", "content": _words(rnd, 5, 30) + f"? (#{i})"},
                         {"role": "assistant", "content": _words(rnd, 10, 120) + ".",
                          "reasoning_content": _words(rnd, 20, 150) + "."}]
            yield {"messages": msgs}


def setups() -> dict:
    from tmplcheck.assets import upstream_templates_dir

    up = upstream_templates_dir()
    return {"plain": ("llama-3", "llama-3"),
            "tools": (str(up / "meta-llama-Llama-3.1-8B-Instruct.jinja"), "llama-3"),
            "reasoning": (str(up / "Qwen-Qwen3-0.6B.jinja"), "qwen2")}


def naive(path: Path, template: str, tokenizer: str) -> tuple[float, int, int]:
    """(seconds, rows, tokens) of the apply_chat_template(tokenize=True) loop, from loading the tokenizer."""
    from transformers import PreTrainedTokenizerFast

    from tmplcheck.templates import load_template
    from tmplcheck.validator.ingest import read_rows
    from tmplcheck.validator.tokenizer import load_tokenizer

    src = load_template(template).source
    hf_dir = load_tokenizer(tokenizer).hf_dir
    convs = [r.conversation for r in read_rows(path)]
    t0 = time.perf_counter()
    tok = PreTrainedTokenizerFast.from_pretrained(str(hf_dir))
    n = 0
    for c in convs:
        n += len(tok.apply_chat_template(c.dicts(), chat_template=src, tokenize=True, **c.render_kw())["input_ids"])
    return time.perf_counter() - t0, len(convs), n


def gate(path: Path, template: str, tokenizer: str, jobs: int) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "tmplcheck", str(path), "-t", template, "-k", tokenizer, "-j",
                        str(jobs), "--format", "json", "-o", os.devnull], capture_output=True, text=True)
    if r.returncode not in (0, 1):
        raise SystemExit(f"gate failed on {path}: {r.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for kind, (template, tokenizer) in setups().items():
            p = Path(d) / f"{kind}.jsonl"
            p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows(kind, args.rows)))
            best_a = best_b = float("inf")
            toks = nrows = 0
            for _ in range(args.repeat):
                secs, nrows, toks = naive(p, template, tokenizer)
                best_a = min(best_a, secs)
                best_b = min(best_b, gate(p, template, tokenizer, args.jobs))
            out[kind] = (nrows / best_a, nrows / best_b, toks / max(nrows, 1))
    print(f"{'rows':<10} {'tokens/row':>10} {'(a) naive rows/s':>17} {'(b) gate rows/s':>16} {'(b)/(a)':>8}")
    for kind, (a, b, t) in out.items():
        print(f"{kind:<10} {t:>10.0f} {a:>17.0f} {b:>16.0f} {b / a:>7.2f}x")
    print(f"({args.rows} rows each, --jobs {args.jobs}, best of {args.repeat} interleaved runs)")


if __name__ == "__main__":
    main()
