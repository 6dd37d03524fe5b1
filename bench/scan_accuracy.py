"""Scan accuracy on the labelled corpus (fixtures/scan_corpus/): recall and false-alarm rate per family and code.

    .venv/bin/python bench/scan_accuracy.py [--text-only] [--json] [--misses]

Each case is scanned with its template and, where the template names a built-in vocabulary, that tokenizer (as
``tmplcheck scan -t T -k K`` would); ``--text-only`` drops the tokenizers (every case judged from text). A case is
flagged when it gets at least one error A finding (the info A013 does not count). Per family: recall = flagged
leaked / leaked, false alarms = flagged clean / clean. Per code: recall = leaked cases labelled with the code that
get it / cases labelled with it; false alarms = clean cases that get it / clean cases. Targets (issue 16): recall
>= 0.97 and false alarms <= 0.02 for every family. Exit 0 when every family meets them, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fixtures" / "scan_corpus"
RECALL_TARGET, FALSE_ALARM_TARGET = 0.97, 0.02


def load_corpus(folder: Path = CORPUS) -> list[dict]:
    rows = []
    for f in sorted(folder.glob("*.jsonl")):
        rows += [json.loads(x) for x in f.read_text(encoding="utf-8").splitlines() if x.strip()]
    return rows


def scan_cases(rows: list[dict], *, text_only: bool = False) -> list[dict]:
    """Each case with ``got``: the error A codes its scan reports, and ``infos``: the info codes."""
    from tmplcheck.artifacts.checks import Generation, scan_generation
    from tmplcheck.artifacts.patterns import patterns_for
    from tmplcheck.templates import registry
    from tmplcheck.validator.findings import Severity
    from tmplcheck.validator.tokenizer import load_tokenizer

    reg = registry()
    pats: dict[str, object] = {}
    toks: dict[str, object] = {}
    out = []
    for r in rows:
        t = r["template"]
        if t not in pats:
            meta = reg[t]
            name = None if text_only else meta.default_tokenizer
            tok = (toks.get(name) or toks.setdefault(name, load_tokenizer(name))) if name else None
            pats[t] = patterns_for(meta, tokenizer=tok)
        extra = {"tools": r["tools"]} if r.get("tools") else {}
        ids = None if text_only else r.get("output_ids")
        gen = Generation(0, r["output"], prompt=r.get("prompt"), output_ids=ids, finish_reason=r.get("finish_reason"),
                         path=r["id"], extra=extra)
        fs = scan_generation(gen, pats[t])
        out.append(r | {"got": sorted({f.code for f in fs if f.severity is Severity.ERROR}),
                        "infos": sorted({f.code for f in fs if f.severity is not Severity.ERROR}),
                        "messages": [f"{f.code} {f.message}" for f in fs]})
    return out


def score(cases: list[dict]) -> dict:
    fam: dict[str, dict] = defaultdict(lambda: {"leaked": 0, "caught": 0, "clean": 0, "alarms": 0})
    code_pos: dict[str, list[int]] = defaultdict(lambda: [0, 0])    # code -> [labelled, caught]
    code_alarm: dict[str, int] = defaultdict(int)
    n_clean = 0
    for c in cases:
        f = fam[c["family"]]
        if c["label"] == "leaked":
            f["leaked"] += 1
            f["caught"] += bool(c["got"])
            for code in c["codes"]:
                code_pos[code][0] += 1
                code_pos[code][1] += code in c["got"]
        else:
            n_clean += 1
            f["clean"] += 1
            f["alarms"] += bool(c["got"])
            for code in c["got"]:
                code_alarm[code] += 1
    families = {}
    for name, f in sorted(fam.items()):
        recall = f["caught"] / f["leaked"] if f["leaked"] else 1.0
        alarm = f["alarms"] / f["clean"] if f["clean"] else 0.0
        families[name] = f | {"recall": round(recall, 4), "false_alarm_rate": round(alarm, 4),
                              "meets_target": recall >= RECALL_TARGET and alarm <= FALSE_ALARM_TARGET}
    codes = {}
    for code in sorted(set(code_pos) | set(code_alarm)):
        lab, got = code_pos.get(code, [0, 0])
        codes[code] = {"labelled": lab, "caught": got, "recall": round(got / lab, 4) if lab else None,
                       "false_alarms": code_alarm.get(code, 0),
                       "false_alarm_rate": round(code_alarm.get(code, 0) / n_clean, 4) if n_clean else 0.0}
    total_l = sum(f["leaked"] for f in fam.values())
    total_c = sum(f["clean"] for f in fam.values())
    return {"families": families, "codes": codes,
            "overall": {"leaked": total_l, "clean": total_c,
                        "recall": round(sum(f["caught"] for f in fam.values()) / total_l, 4) if total_l else 1.0,
                        "false_alarm_rate": round(sum(f["alarms"] for f in fam.values()) / total_c, 4)
                        if total_c else 0.0},
            "misses": [c["id"] for c in cases if c["label"] == "leaked" and not c["got"]],
            "code_misses": [f"{c['id']}: wanted {sorted(set(c['codes']) - set(c['got']))}, got {c['got']}"
                            for c in cases if c["label"] == "leaked" and c["got"] and set(c["codes"]) - set(c["got"])],
            "false_alarms": [f"{c['id']}: {c['got']}" for c in cases if c["label"] == "clean" and c["got"]]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--text-only", action="store_true", help="scan without tokenizers and output_ids")
    ap.add_argument("--json", action="store_true", help="print the scores as JSON")
    ap.add_argument("--misses", action="store_true", help="list the missed and falsely flagged cases")
    args = ap.parse_args()
    s = score(scan_cases(load_corpus(), text_only=args.text_only))
    if args.json:
        print(json.dumps(s, indent=2))
        return 0 if all(f["meets_target"] for f in s["families"].values()) else 1
    print(f"scan accuracy on {CORPUS.relative_to(ROOT)} ({'text only' if args.text_only else 'ids where given'}); "
          f"targets: recall >= {RECALL_TARGET}, false alarms <= {FALSE_ALARM_TARGET}\n")
    print(f"{'family':<10} {'leaked':>6} {'caught':>6} {'recall':>7} {'clean':>6} {'alarms':>6} {'f.alarm':>7}  target")
    for name, f in s["families"].items():
        print(f"{name:<10} {f['leaked']:>6} {f['caught']:>6} {f['recall']:>7.3f} {f['clean']:>6} {f['alarms']:>6} "
              f"{f['false_alarm_rate']:>7.3f}  {'met' if f['meets_target'] else 'MISSED'}")
    o = s["overall"]
    print(f"{'all':<10} {o['leaked']:>6} {'':>6} {o['recall']:>7.3f} {o['clean']:>6} {'':>6} "
          f"{o['false_alarm_rate']:>7.3f}\n")
    print(f"{'code':<6} {'labelled':>8} {'caught':>6} {'recall':>7} {'alarms':>6} {'f.alarm':>7}")
    for code, c in s["codes"].items():
        rec = f"{c['recall']:.3f}" if c["recall"] is not None else "-"
        print(f"{code:<6} {c['labelled']:>8} {c['caught']:>6} {rec:>7} {c['false_alarms']:>6} "
              f"{c['false_alarm_rate']:>7.3f}")
    if args.misses or s["misses"] or s["false_alarms"]:
        print("\nmissed leaks:", ", ".join(s["misses"]) or "none")
        print("false alarms:", "; ".join(s["false_alarms"]) or "none")
    if args.misses:
        print("right verdict, other code:", "; ".join(s["code_misses"]) or "none")
    return 0 if all(f["meets_target"] for f in s["families"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
