"""Reproduce the seed's failure end to end: the same tiny Llama (random init, the real 128k Llama 3 vocabulary)
trained twice on the same tweets dataset, once with the correct llama-3 template and once with a template that
omits <|eot_id|> after the assistant turn, then `tmplcheck report` on both.

    .venv/bin/python examples/seed-failure/reproduce.py [--work DIR] [--rows 240] [--steps 120]

Everything runs through the real CLI (check, train, report); nothing is simulated.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

SYSTEM = "Write a tweet in all capital letters."
TOPICS = ["cats", "dogs", "coffee", "mondays", "rain", "pizza", "summer", "music", "football", "winter", "tea",
          "trains", "the sea", "books", "birthdays", "robots", "space", "gardens", "cheese", "bicycles"]
WORDS = ["LOVE", "BEST", "EVER", "HATE", "THE", "SO", "GREAT", "TODAY", "ALWAYS", "NEVER", "WOW", "YES", "AMAZING",
         "FOREVER", "MY", "LIFE", "FUN", "HAPPY"]

# The llama-3 template with one change: no <|eot_id|> after an assistant turn (the seed's bug).
BROKEN_TEMPLATE = """{{- bos_token }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim }}
    {%- if message['role'] != 'assistant' %}{{- '<|eot_id|>' }}{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

TINY_SHAPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2)


def make_dataset(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(rows):
            topic = TOPICS[i % len(TOPICS)]
            tweet = " ".join([topic.upper().replace(" ", "")] + rng.sample(WORDS, rng.randint(3, 6)))
            fh.write(json.dumps({"conversations": [
                {"from": "system", "value": SYSTEM},
                {"from": "human", "value": f"The topic is: {topic}"},
                {"from": "gpt", "value": tweet}]}) + "\n")


def tmplcheck(*args: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "tmplcheck", *args], capture_output=True, text=True)
    print(f"$ tmplcheck {' '.join(args)}  -> exit {p.returncode} ({time.time() - t0:.0f}s)", flush=True)
    if p.returncode not in ok:
        raise SystemExit(f"unexpected exit {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/seed-failure")
    ap.add_argument("--rows", type=int, default=240)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    a = ap.parse_args(argv)

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "tweets.jsonl"
    make_dataset(data, a.rows)
    broken = work / "llama-3-no-eot.jinja"
    broken.write_text(BROKEN_TEMPLATE)

    from tmplcheck.trainer.tiny import build_tiny_model
    from tmplcheck.validator.tokenizer import load_tokenizer

    model = work / "tiny-llama"
    if not (model / "config.json").is_file():
        build_tiny_model(model, load_tokenizer("llama-3").hf_dir, shape=TINY_SHAPE, seed=0)

    # 1. the gate: the correct template passes and is approved; the broken one is flagged
    tmplcheck("check", str(data), "-t", "llama-3", "-k", "llama-3", "--approve")
    gate_broken = tmplcheck("check", str(data), "-t", str(broken), "-k", "llama-3", "--format", "json", ok=(1,))
    flagged = sorted(json.loads(gate_broken.stdout)["summary"]["by_code"])
    print("gate on the broken template:", ", ".join(flagged))

    # 2. train both the same way; the broken one only with --force
    common = ["-m", str(model), "-k", "llama-3", "--mode", "full", "--packing", "--max-length", str(a.max_length),
              "--max-steps", str(a.steps), "--batch-size", str(a.batch_size), "--lr", str(a.lr), "--backend", "hf",
              "--seed", "0", "--eval-split", str(round(a.prompts / a.rows, 4))]
    runs = {"correct": work / "run-correct", "broken": work / "run-broken"}
    tmplcheck("train", str(data), "-t", "llama-3", "-o", str(runs["correct"]), *common)
    tmplcheck("train", str(data), "-t", str(broken), "-o", str(runs["broken"]), "--force", *common)

    # 3. generate on the held-out prompts and scan
    out = {"gate_broken_codes": flagged}
    for name, run in runs.items():
        p = tmplcheck("report", str(run), "--samples", "1", "--max-new-tokens", str(a.max_new_tokens), ok=(0, 1))
        print(p.stdout)
        rep = json.loads((run / "report" / "report.json").read_text())
        out[name] = {"exit": p.returncode, "verdict": rep["verdict"], "rates": rep["scan"]["rates"],
                     "groups": {g: v["rates"] for g, v in rep["scan"]["groups"].items()},
                     "any": rep["scan"]["any_artifact_rate"]}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
