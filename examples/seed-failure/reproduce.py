"""Reproduce the seed's failure end to end: the same tiny Llama (random init, the real 128k Llama 3 vocabulary)
trained twice on the same tweets dataset, once with the correct llama-3 template and once with a template that
omits <|eot_id|> after the assistant turn (fixtures/templates/llama-3-no-eot.jinja), then `tmplcheck report` on both.

    .venv/bin/python examples/seed-failure/reproduce.py [--work DIR] [--full] [--steps N] ...

Both runs use the naive setup the seed describes: a full fine-tune on packed rows with the loss on every token
(`--mode full --packing --loss-on all`). Everything runs through the real CLI (check, train, report); nothing is
simulated. The defaults are the small configuration the test suite runs (a few minutes on 2 CPU cores);
``--full`` is the larger one measured before the issue was filed (2 layers, hidden size 64, 300 steps of 8 packed
sequences of 128 tokens, lr 3e-3, 400 rows: ~10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BROKEN_TEMPLATE = ROOT / "fixtures" / "templates" / "llama-3-no-eot.jinja"
SYSTEM = "Write a tweet in all capital letters."
TOPICS = ["cats", "dogs", "coffee", "mondays", "rain", "pizza", "summer", "music", "football", "winter", "tea",
          "trains", "the sea", "books", "birthdays", "robots", "space", "gardens", "cheese", "bicycles"]
WORDS = ["LOVE", "BEST", "EVER", "HATE", "THE", "SO", "GREAT", "TODAY", "ALWAYS", "NEVER", "WOW", "YES", "AMAZING",
         "FOREVER", "MY", "LIFE", "FUN", "HAPPY"]

#: the configuration the test suite runs, and the larger one from the issue (``--full``)
SMALL = dict(rows=200, topics=8, hidden=64, tie=True, steps=200, max_length=64, batch_size=4, lr=1e-2,
             prompts=12, max_new_tokens=24, samples=1)
FULL = dict(rows=400, topics=20, hidden=64, tie=False, steps=300, max_length=128, batch_size=8, lr=3e-3,
            prompts=20, max_new_tokens=48, samples=1)


def make_dataset(path: Path, rows: int, topics: int, seed: int = 0) -> None:
    """Seed-style rows: system "Write a tweet in all capital letters.", user "The topic is: X", a reply in capitals."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(rows):
            topic = TOPICS[i % topics]
            tweet = " ".join([topic.upper().replace(" ", "")] + rng.sample(WORDS, rng.randint(3, 6)))
            fh.write(json.dumps({"conversations": [
                {"from": "system", "value": SYSTEM},
                {"from": "human", "value": f"The topic is: {topic}"},
                {"from": "gpt", "value": tweet}]}) + "\n")


#: glibc malloc: keep the large freed buffers (the 128k-vocabulary logits, ~130 MB a step) in the heap instead of
#: returning them to the OS and page-faulting them back in on every step. Only speed changes (about 3x for these
#: CPU runs on a loaded 2-core machine); no result does.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296"}


def tmplcheck(*args: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "tmplcheck", *args], capture_output=True, text=True,
                       env={**os.environ, **MALLOC_ENV})
    print(f"$ tmplcheck {' '.join(args)}  -> exit {p.returncode} ({time.time() - t0:.0f}s)", flush=True)
    if p.returncode not in ok:
        raise SystemExit(f"unexpected exit {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/seed-failure")
    ap.add_argument("--full", action="store_true", help="the larger configuration from the issue (~10 min on CPU)")
    for k, v in SMALL.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            ap.add_argument(flag, type=type(v), default=None)
    a = ap.parse_args(argv)
    c = dict(FULL if a.full else SMALL)
    c.update({k: getattr(a, k) for k in SMALL if getattr(a, k) is not None})
    t_start = time.time()

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "tweets.jsonl"
    make_dataset(data, c["rows"], c["topics"])

    from tmplcheck.trainer.tiny import build_tiny_model
    from tmplcheck.validator.tokenizer import load_tokenizer

    shape = dict(hidden_size=c["hidden"], intermediate_size=2 * c["hidden"], num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2)
    model = work / f"tiny-llama-h{c['hidden']}{'-tied' if c['tie'] else ''}"
    if not (model / "config.json").is_file():
        build_tiny_model(model, load_tokenizer("llama-3").hf_dir, shape=shape, seed=0,
                         tie_word_embeddings=c["tie"])

    # 1. the gate: the correct template passes and is approved; the broken one is flagged (exit 1)
    tmplcheck("check", str(data), "-t", "llama-3", "-k", "llama-3", "--max-length", str(c["max_length"]),
              "--approve")
    gate_broken = tmplcheck("check", str(data), "-t", str(BROKEN_TEMPLATE), "-k", "llama-3", "--format", "json",
                            ok=(1,))
    flagged = sorted(json.loads(gate_broken.stdout)["summary"]["by_code"])
    print("gate on the broken template:", ", ".join(flagged))

    # 2. train both the same way (the naive pipeline: full fine-tune, packed rows, loss on every token);
    #    the broken one only with --force, since the gate refused it
    common = ["-m", str(model), "-k", "llama-3", "--mode", "full", "--packing", "--loss-on", "all",
              "--max-length", str(c["max_length"]), "--max-steps", str(c["steps"]),
              "--batch-size", str(c["batch_size"]), "--lr", str(c["lr"]), "--backend", "hf", "--seed", "0",
              "--eval-split", str(round(c["prompts"] / c["rows"], 4))]
    runs = {"correct": work / "run-correct", "broken": work / "run-broken"}
    tmplcheck("train", str(data), "-t", "llama-3", "-o", str(runs["correct"]), *common)
    tmplcheck("train", str(data), "-t", str(BROKEN_TEMPLATE), "-o", str(runs["broken"]), "--force", *common)

    # 3. generate on the held-out prompts (greedy and sampled, the saved stop ids) and scan
    out: dict = {"config": c, "gate_broken_codes": flagged, "gate_broken_exit": gate_broken.returncode}
    for name, run in runs.items():
        p = tmplcheck("report", str(run), "--samples", str(c["samples"]), "--max-new-tokens",
                      str(c["max_new_tokens"]), ok=(0, 1))
        print(p.stdout)
        rep = json.loads((run / "report" / "report.json").read_text())
        metrics = json.loads((run / "metrics.json").read_text())
        gens = [json.loads(x) for x in (run / "report" / "generations.jsonl").read_text().splitlines()]
        greedy = next((g for g in gens if g["mode"] == "greedy"), None)
        out[name] = {"exit": p.returncode, "verdict": rep["verdict"], "rates": rep["scan"]["rates"],
                     "groups": {g: v["rates"] for g, v in rep["scan"]["groups"].items()},
                     "any": rep["scan"]["any_artifact_rate"],
                     "final_loss": metrics["loss"][-1]["loss"] if metrics["loss"] else None,
                     "train_seconds": round(metrics["train_seconds"], 1),
                     "example": greedy and {"output": greedy["output"], "output_skipped": greedy["output_skipped"]}}
    out["wall_seconds"] = round(time.time() - t_start, 1)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
