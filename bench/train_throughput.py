"""Throughput of the two training backends on the same model and data, in one run: Unsloth vs transformers+PEFT.

Builds a random-init Llama-architecture model (default: the 1.24B ``llama-3-1b`` shape) with the real Llama 3
vocabulary, writes a synthetic dataset in the tweet style whose rows are ``--row-tokens`` tokens long on average
(the word counts are calibrated with the tokenizer and the llama-3 template, and the measured mean is reported as
``row_tokens_measured``: the upper-case replies take more than one token a word, so uncalibrated rows of "700 words"
were ~927 tokens), approves it with the gate, then trains the same LoRA run with ``--backend unsloth`` and
``--backend hf``, each in its own process (Unsloth patches transformers for the whole process, so the baseline must
not share it), and prints tokens/s, the median step time, peak GPU memory and the ratios, as a table and as JSON
(``--json FILE``). Both runs use the same optimiser (fused AdamW) and gradient checkpointing (on with CUDA).

    python -P bench/train_throughput.py --tokenizer DIR [--shape llama-3-1b] [--steps 40] [--batch-size 8]

Measured before, outside the project (H200, batch 8, ~703 tokens/row, bf16, Unsloth with its default adamw_8bit):
1.65x, 3.10 vs 4.23 GB at 1.24B.
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

WORDS = ("the quick brown fox jumps over a lazy dog while seven bright stars watch quietly from above and "
         "every river finds its way to the sea through valleys hills and ancient forests full of song").split()


def _rows(n: int, words: int, seed: int) -> list[dict]:
    """``n`` rows in the seed's style (system/user/assistant) of about ``words`` words."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        user_words = words // 3
        reply_words = max(1, words - user_words - 30)
        user = "The topic is: " + " ".join(rng.choice(WORDS) for _ in range(user_words))
        reply = " ".join(rng.choice(WORDS) for _ in range(reply_words)).upper() + f" #{i}"
        out.append({"conversations": [
            {"from": "system", "value": "Write a tweet in all capital letters."},
            {"from": "human", "value": user},
            {"from": "gpt", "value": reply}]})
    return out


def row_tokens_of(rows: list[dict], tokenizer: str) -> float:
    """Mean tokens a row: the llama-3 template's render, tokenized (with BOS) as the trainer trains it."""
    from tmplcheck.templates import load_template
    from tmplcheck.validator.tokenizer import load_tokenizer

    template, tok = load_template("llama-3"), load_tokenizer(tokenizer)
    role = {"system": "system", "human": "user", "gpt": "assistant"}
    n = [len(tok.encode(template.render([{"role": role[m["from"]], "content": m["value"]}
                                          for m in r["conversations"]]), add_special_tokens=False).ids)
         for r in rows]
    return sum(n) / len(n)


def make_dataset(path: Path, rows: int, row_tokens: int, seed: int, tokenizer: str | None = None) -> float | None:
    """Write ``rows`` rows of about ``row_tokens`` tokens each; with ``tokenizer``, the word count is calibrated
    on a sample first and the measured mean tokens a row is returned."""
    words = row_tokens
    if tokenizer is not None:
        words = max(40, round(row_tokens * row_tokens / row_tokens_of(_rows(32, row_tokens, seed + 1), tokenizer)))
    data = _rows(rows, words, seed)
    with open(path, "w", encoding="utf-8") as fh:
        for r in data:
            fh.write(json.dumps(r) + "\n")
    return row_tokens_of(data, tokenizer) if tokenizer is not None else None


def tmplcheck(*args: str, env=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-P", "-m", "tmplcheck", *args]
    print("$", " ".join(cmd[3:]), flush=True)
    return subprocess.run(cmd, env=env, text=True, capture_output=True)


def run_backend(backend: str, args, data: Path, model: Path, out: Path, approved: bool) -> dict:
    flags = ["train", str(data), "--model", str(model), "--template", "llama-3", "--tokenizer", args.tokenizer,
             "--backend", backend, "--max-steps", str(args.steps), "--batch-size", str(args.batch_size),
             "--max-length", str(args.max_length), "--lora-r", str(args.lora_r), "--eval-split", "0",
             "--seed", "0", "--output", str(out)]
    if not approved:
        flags.append("--force")
    t0 = time.perf_counter()
    r = tmplcheck(*flags)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.stderr.write(r.stdout + r.stderr)
        raise SystemExit(f"{backend}: training failed (exit {r.returncode})")
    m = json.loads((out / "metrics.json").read_text())
    steps = m["step_seconds"]
    steady = steps[max(3, len(steps) // 10):] or steps
    med = sorted(steady)[len(steady) // 2]
    tokens_per_step = m["train_tokens"] / max(1, m["steps"])
    return {"backend": backend, "steps": m["steps"], "train_tokens": m["train_tokens"],
            "tokens_per_s": m["tokens_per_s"], "median_step_s": med,
            "steady_tokens_per_s": tokens_per_step / med if med else None,
            "peak_memory_bytes": m["peak_memory_bytes"], "peak_memory_kind": m["peak_memory_kind"],
            "final_loss": m["loss"][-1]["loss"] if m["loss"] else None, "wall_s": wall,
            "stop_ids": json.loads((out / "model" / "generation_config.json").read_text())["eos_token_id"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", required=True, help="HF tokenizer dir of the Llama 3 vocabulary (or a name)")
    ap.add_argument("--shape", default="llama-3-1b", help="model shape from tmplcheck.trainer.tiny.SHAPES")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--row-tokens", type=int, default=700)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--backends", default="unsloth,hf")
    ap.add_argument("--work", help="work directory (default: a temporary one)")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: the throughput comparison needs a GPU", file=sys.stderr)
        return 2
    work = Path(a.work or tempfile.mkdtemp(prefix="tmplcheck-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / f"model-{a.shape}"
    if not (model / "config.json").is_file():
        from tmplcheck.trainer.tiny import build_tiny_model

        tdir = Path(a.tokenizer)
        if not tdir.is_dir():
            from tmplcheck.validator.tokenizer import load_tokenizer

            tdir = load_tokenizer(a.tokenizer).hf_dir
        print(f"building a random-init {a.shape} model in {model}", flush=True)
        build_tiny_model(model, tdir, shape=a.shape, dtype="bfloat16", max_position_embeddings=4096)
    data = work / "bench.jsonl"
    rows = a.steps * a.batch_size + 8
    measured = make_dataset(data, rows, a.row_tokens, seed=0, tokenizer=a.tokenizer)
    print(f"rows: {rows}, {measured:.0f} tokens each on average (asked for {a.row_tokens})", flush=True)
    r = tmplcheck("check", str(data), "--template", "llama-3", "--tokenizer", a.tokenizer,
                  "--max-length", str(a.max_length), "--approve")
    approved = r.returncode == 0
    if not approved:
        sys.stderr.write(r.stdout[-3000:] + r.stderr[-3000:])
        print(f"WARNING: the gate could not approve the benchmark data (exit {r.returncode}); training with "
              "--force, which does not change the throughput", file=sys.stderr, flush=True)
    results = []
    for backend in a.backends.split(","):
        out = work / f"run-{backend}-{int(time.time())}"
        results.append(run_backend(backend, a, data, model, out, approved))
        print(json.dumps(results[-1]), flush=True)

    print()
    print(f"{'backend':<9} {'tokens/s':>10} {'steady tok/s':>13} {'median step':>12} {'peak GiB':>9} "
          f"{'final loss':>10}  stop ids")
    for x in results:
        print(f"{x['backend']:<9} {x['tokens_per_s']:>10.0f} {x['steady_tokens_per_s'] or 0:>13.0f} "
              f"{x['median_step_s']:>11.3f}s {x['peak_memory_bytes'] / 2**30:>9.2f} {x['final_loss'] or 0:>10.4f}"
              f"  {x['stop_ids']}")
    by = {x["backend"]: x for x in results}
    summary = {"shape": a.shape, "batch_size": a.batch_size, "row_tokens": a.row_tokens,
               "row_tokens_measured": measured, "steps": a.steps, "optim": "adamw_torch_fused (both)",
               "device": torch.cuda.get_device_name(0), "results": results}
    if "unsloth" in by and "hf" in by:
        u, h = by["unsloth"], by["hf"]
        summary["speedup_tokens_per_s"] = u["tokens_per_s"] / h["tokens_per_s"]
        summary["speedup_median_step"] = h["median_step_s"] / u["median_step_s"]
        summary["memory_ratio"] = u["peak_memory_bytes"] / h["peak_memory_bytes"]
        print(f"\nunsloth vs hf: {summary['speedup_tokens_per_s']:.2f}x tokens/s, "
              f"{summary['speedup_median_step']:.2f}x median step, peak memory "
              f"{u['peak_memory_bytes'] / 1e9:.2f} vs {h['peak_memory_bytes'] / 1e9:.2f} GB "
              f"({summary['memory_ratio']:.2f}) on {summary['device']}")
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
