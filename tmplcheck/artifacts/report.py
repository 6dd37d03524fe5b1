"""``tmplcheck report RUN_DIR``: generate on the held-out prompts, scan, write report.json and report.html.

Each generation is scanned twice: as decoded with special tokens kept (``kept``) and skipped (``skipped``, what
most serving stacks show). Rates are given per group (``greedy/kept``, ``greedy/skipped``, ``sampled/...``) and
overall; thresholds apply to the overall rate of each code.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tmplcheck import __version__
from tmplcheck.artifacts.patterns import ArtifactPatterns, patterns_for
from tmplcheck.artifacts.scan import A_CODES, ARTIFACT_CODES, scan_rows
from tmplcheck.validator.codes import RULES

EXAMPLES_PER_CODE = 3


class ReportError(Exception):
    """A user-facing problem with the run directory."""


@dataclass
class Report:
    data: dict[str, Any]      # exactly what report.json holds
    result: Any               # the GateResult of the scan
    out_dir: Path
    json_path: Path
    html_path: Path

    @property
    def exit_code(self) -> int:
        return max(self.result.exit_code, int(not (self.data.get("stop_check") or {}).get("passed", True)),
                   int(self.data.get("exit_code") or 0))


def _read_json(p: Path, what: str) -> Any:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ReportError(f"{p}: cannot read the {what}: {e}") from None


def load_run_template(run_dir: Path, run: dict) -> Any:
    """The validated template the run trained with: the registry's when the saved source matches it, else the
    saved source itself (metadata derived by the loader)."""
    from tmplcheck.templates import load_template, registry

    t = run.get("template") or {}
    if isinstance(t, str):
        t = {"name": t}
    name, source = t.get("name"), t.get("source")
    tok_cfg = _read_json(run_dir / "tokenizer" / "tokenizer_config.json", "tokenizer config") or None
    if name and name in registry():
        reg = load_template(name)
        if source is None or reg.source == source:
            return reg
    if source:
        d = run_dir / "report"
        d.mkdir(parents=True, exist_ok=True)
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in (name or "template")) or "template"
        p = d / f"{stem}.jinja"
        p.write_text(source, encoding="utf-8")
        return load_template(str(p), tokenizer_config=tok_cfg)
    if (run_dir / "tokenizer").is_dir():
        return load_template(str(run_dir / "tokenizer"), tokenizer_config=tok_cfg)
    raise ReportError(f"{run_dir}/run.json names no template source and there is no tokenizer/ folder")


def _stop_ids(run: dict, run_dir: Path) -> list[int]:
    ids = run.get("stop_ids")
    if not ids:
        gc = _read_json(run_dir / "model" / "generation_config.json", "generation config") or {}
        ids = gc.get("eos_token_id")
    if isinstance(ids, int):
        ids = [ids]
    return [int(i) for i in (ids or [])]


def check_stop_ids(run_dir: Path, run: dict, template: Any) -> dict[str, Any]:
    """Does every saved generation config (``model/``, and ``merged/`` when there is one) stop on every end-of-turn
    id? The end-of-turn ids are the template's end-of-turn strings in the run's tokenizer plus the stop ids
    ``run.json`` says the trainer wrote. ``passed`` is False when a config is missing or lacks one of them: a
    served model would not stop at the end of its answer (what K005 warns about before training)."""
    expected: dict[int, str] = {}
    notes: list[str] = []
    if (run_dir / "tokenizer").is_dir() and template.meta.end_of_turn:
        from tmplcheck.trainer.special import single_id
        from tmplcheck.validator.tokenizer import load_tokenizer

        try:
            tok = load_tokenizer(str(run_dir / "tokenizer"))
            for s in template.meta.end_of_turn:
                i = single_id(tok, s)
                if i is None:
                    notes.append(f"the run's tokenizer has no single id for the end-of-turn {s!r}")
                else:
                    expected.setdefault(int(i), s)
        except Exception as e:  # noqa: BLE001 - fall back on run.json's stop ids, and say so
            notes.append(f"the run's tokenizer could not be loaded ({type(e).__name__}: {e})")
    for i in run.get("stop_ids") or []:
        if isinstance(i, int):
            expected.setdefault(i, "run.json stop id")
    saved: dict[str, list[int] | None] = {}
    for sub in ("model", "merged"):
        p = run_dir / sub / "generation_config.json"
        if sub == "merged" and not (run_dir / sub).is_dir():
            continue
        gc = _read_json(p, "generation config")
        ids = None if not isinstance(gc, dict) else gc.get("eos_token_id")
        saved[sub] = [ids] if isinstance(ids, int) else ([int(x) for x in ids if isinstance(x, int)]
                                                          if isinstance(ids, list) else None)
    problems = []
    for sub, ids in saved.items():
        if ids is None:
            problems.append(f"{sub}/generation_config.json is missing or has no eos_token_id")
            continue
        miss = sorted(set(expected) - set(ids))
        if miss:
            problems.append(f"{sub}/generation_config.json stops on {ids} but not on "
                            + ", ".join(f"{i} ({expected[i]})" for i in miss))
    if not expected:
        notes.append("no end-of-turn id is known for this run (template without end-of-turn strings, no stop ids "
                     "in run.json): nothing to compare")
    passed = not problems
    msg = ("every saved generation config stops on every end-of-turn id "
           f"({', '.join(f'{i} {s}' for i, s in sorted(expected.items()))})" if passed and expected
           else "; ".join(problems) or notes[-1])
    return {"passed": passed, "end_of_turn": {str(i): s for i, s in sorted(expected.items())}, "saved": saved,
            "problems": problems, "notes": notes, "message": msg}


def _run_patterns(run_dir: Path, template: Any) -> ArtifactPatterns:
    """Patterns with the run's own tokenizer, so control tokens, BOS and headers are decided on the generations'
    ids (every generated row has them); from text alone when the tokenizer cannot be loaded."""
    from tmplcheck.validator.tokenizer import load_tokenizer

    tok = None
    if (run_dir / "tokenizer").is_dir():
        try:
            tok = load_tokenizer(str(run_dir / "tokenizer"))
        except Exception:  # the ids are an extra; the text checks still run (the summary says so)
            tok = None
    pats = patterns_for(template.meta, tokenizer=tok)
    if tok is not None and pats.bos_id is None:
        tok_cfg = _read_json(run_dir / "tokenizer" / "tokenizer_config.json", "tokenizer config") or {}
        bos = tok_cfg.get("bos_token") if isinstance(tok_cfg.get("bos_token"), str) else None
        pats.bos_id = tok.token_to_id(bos) if bos else None
    return pats


def scan_views(rows: Sequence[dict], pats: ArtifactPatterns, *, thresholds: dict[str, float] | None = None,
               warn_only: bool = False, path: str = "generations.jsonl") -> tuple[Any, list[dict]]:
    """Scan every generation as kept and as skipped text; returns the GateResult and the scanned rows
    (line N of the result is scanned[N-1])."""
    scanned = []
    for r in rows:
        for view, key in (("kept", "output"), ("skipped", "output_skipped")):
            if key not in r:
                continue
            scanned.append({"prompt": r.get("prompt"), "output": r[key], "output_ids": r.get("output_ids"),
                            "finish_reason": r.get("finish_reason"), "mode": r.get("mode", "given"),
                            "view": view, "eval_line": r.get("eval_line")}
                           | ({"tools": r["tools"]} if r.get("tools") else {}))
    res = scan_rows(scanned, pats, path=path, thresholds=thresholds, warn_only=warn_only,
                    group=lambda g: f"{g.extra.get('mode')}/{g.extra.get('view')}")
    return res, scanned


def segments(text: str, start: int | None, end: int | None, pats: ArtifactPatterns) -> list[dict]:
    """Split ``text`` into plain / control-token pieces, marking those inside [start, end)."""
    cuts = {0, len(text)}
    if start is not None and end is not None:
        cuts |= {max(0, min(start, len(text))), max(0, min(end, len(text)))}
    ctl: list[tuple[int, int]] = []
    if pats.control_re is not None:
        for m in pats.control_re.finditer(text):
            ctl.append((m.start(), m.end()))
            cuts |= {m.start(), m.end()}
    pts = sorted(cuts)
    out = []
    ci = 0
    for a, b in zip(pts, pts[1:]):
        if a == b:
            continue
        while ci < len(ctl) and ctl[ci][1] <= a:
            ci += 1
        is_ctl = ci < len(ctl) and ctl[ci][0] <= a and b <= ctl[ci][1]
        mark = start is not None and end is not None and start <= a and b <= end and start < end
        if out and out[-1]["ctl"] == is_ctl and out[-1]["mark"] == mark and not is_ctl:
            out[-1]["text"] += text[a:b]
        else:
            out.append({"text": text[a:b], "ctl": is_ctl, "mark": mark})
    return out


def examples(result: Any, scanned: list[dict], pats: ArtifactPatterns, per_code: int = EXAMPLES_PER_CODE) -> list[dict]:
    out: list[dict] = []
    seen: dict[str, int] = {}
    for f in result.findings:
        if f.code not in ARTIFACT_CODES or seen.get(f.code, 0) >= per_code or not 1 <= f.line <= len(scanned):
            continue
        row = scanned[f.line - 1]
        seen[f.code] = seen.get(f.code, 0) + 1
        d = f.data or {}
        out.append({"code": f.code, "name": RULES[f.code].name, "line": f.line, "mode": row["mode"],
                    "view": row["view"], "eval_line": row.get("eval_line"), "message": f.message,
                    "finish_reason": row.get("finish_reason"),
                    "segments": segments(row["output"], d.get("start"), d.get("end"), pats)})
    return out


ENGINES = ("hf", "llamacpp")
#: generations file per engine, in the report folder
GENERATION_FILES = {"hf": "generations.jsonl", "llamacpp": "generations-llamacpp.jsonl"}
ENGINE_LABELS = {"hf": "transformers (trained model)", "llamacpp": "llama.cpp (exported GGUF)"}


def _read_generations(p: Path) -> list[dict]:
    return [json.loads(x) for x in Path(p).read_text(encoding="utf-8").splitlines() if x.strip()]


def build_report(run_dir: Path, *, out_dir: Path | None = None, thresholds: dict[str, float] | None = None,
                 samples: int = 1, max_prompts: int | None = None, max_new_tokens: int = 64,
                 temperature: float = 0.8, seed: int = 0, generations_file: str | Path | None = None,
                 warn_only: bool = False, engine: str = "hf") -> Report:
    """Generate (or re-read ``generations_file``), scan, and write report.json, report.html, generations.jsonl.

    ``engine``: "hf" (the trained model through transformers), "llamacpp" (RUN_DIR/export/model.gguf through
    llama-cpp-python's chat completion; ``tmplcheck export`` first) or "both". The primary engine (the first) fills
    report.json's ``scan``/``examples``/``generation``; ``engines`` holds every engine's, and with llamacpp an
    earlier HF report's generations.jsonl in the same folder is scanned again for the side-by-side comparison."""
    from tmplcheck.artifacts.generate import GenerationConfig, eval_prompts, generate, write_generations
    from tmplcheck.artifacts.html import render_html

    if engine not in (*ENGINES, "both"):
        raise ReportError(f"--engine must be hf, llamacpp or both, not {engine!r}")
    wanted = list(ENGINES) if engine == "both" else [engine]

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such run directory")
    run = _read_json(run_dir / "run.json", "run config")
    if run is None:
        raise ReportError(f"{run_dir}: no run.json (is this a directory written by `tmplcheck train`?)")
    out = Path(out_dir) if out_dir else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    template = load_run_template(run_dir, run)
    stops = _stop_ids(run, run_dir)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, samples=samples, temperature=temperature, seed=seed,
                           max_prompts=max_prompts)
    gguf = run_dir / "export" / "model.gguf"
    if "llamacpp" in wanted and not generations_file and not gguf.is_file():
        raise ReportError(f"{run_dir}: no export/model.gguf for --engine llamacpp; run `tmplcheck export {run_dir}` "
                          "first")
    prompts: list = []
    if not generations_file:
        eval_path = run_dir / "eval.jsonl"
        if not eval_path.is_file():
            raise ReportError(f"{run_dir}: no eval.jsonl with held-out rows to generate on")
        prompts = list(eval_prompts(eval_path, max_prompts))
        if not prompts:
            raise ReportError(f"{eval_path}: no usable held-out prompts")
    generated: dict[str, list[dict]] = {}
    for name in wanted:
        gen_path = out / GENERATION_FILES[name]
        if generations_file:   # re-scan only: the primary engine's file given, the others' from this folder
            if name == wanted[0]:
                generated[name] = _read_generations(Path(generations_file))
            elif gen_path.is_file():
                generated[name] = _read_generations(gen_path)
            continue
        if name == "hf":
            from tmplcheck.trainer import load_run

            model, tokenizer, _ = load_run(run_dir)
            generated[name] = generate(model, tokenizer, template, prompts, stops, cfg)
        else:
            from tmplcheck.artifacts.generate import generate_llamacpp

            generated[name] = generate_llamacpp(gguf, prompts, cfg)
        write_generations(generated[name], gen_path)
    for name in ENGINES:   # an earlier report's generations of the other engine, for the side-by-side view
        p = out / GENERATION_FILES[name]
        if name not in generated and "llamacpp" in wanted and p.is_file() and p.stat().st_size:
            generated[name] = _read_generations(p)
    pats = _run_patterns(run_dir, template)
    pats.stop_ids = frozenset(stops) | pats.stop_ids
    engines: dict[str, dict[str, Any]] = {}
    primary = wanted[0]
    for name, erows in generated.items():
        if not erows and name != primary:
            continue
        gpath = str(Path(generations_file) if generations_file and name == primary else out / GENERATION_FILES[name])
        res, sc = scan_views(erows, pats, thresholds=thresholds, warn_only=warn_only, path=gpath)
        engines[name] = {"result": res, "scanned": sc, "rows": erows, "path": gpath}
    result, scanned, rows = engines[primary]["result"], engines[primary]["scanned"], engines[primary]["rows"]
    gen_path = Path(engines[primary]["path"])
    stop_check = check_stop_ids(run_dir, run, template)
    approval = _read_json(run_dir / "approval.json", "approval stamp")
    metrics = _read_json(run_dir / "metrics.json", "training metrics") or {}
    art = result.summary["artifacts"]
    data = {
        "tmplcheck_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "run_dir": str(run_dir),
        "run": {k: v for k, v in run.items() if k != "template"} | {
            "template": {k: v for k, v in (run.get("template") or {}).items() if k != "source"}
            if isinstance(run.get("template"), dict) else run.get("template")},
        "forced": bool(run.get("forced")),
        "approval": approval,
        "gate": (approval or {}).get("summary") or (approval or {}).get("gate"),
        "metrics": {"loss": metrics.get("loss", []), "tokens_per_s": metrics.get("tokens_per_s"),
                    "peak_memory_bytes": metrics.get("peak_memory_bytes"),
                    "train_tokens": metrics.get("train_tokens")},
        "generation": {"prompts": len({r.get("eval_line") for r in rows}), "generations": len(rows),
                       "samples": samples, "max_new_tokens": max_new_tokens, "temperature": temperature,
                       "seed": seed, "stop_ids": stops, "template": template.meta.name},
        "verdict": art["verdict"] if stop_check["passed"] else "fail",
        "exit_code": max(result.exit_code, int(not stop_check["passed"])),
        "stop_check": stop_check,
        "scan": art,
        "codes": {c: {"name": RULES[c].name, "summary": RULES[c].summary} for c in A_CODES},
        "summary": {k: v for k, v in result.summary.items() if k != "artifacts"},
        "examples": examples(result, scanned, pats),
        "findings": [f.to_dict() for f in result.findings],
        "engine": primary,
        "engines": {name: {
            "label": ENGINE_LABELS[name], "generations_file": Path(e["path"]).name,
            "generated_now": name in wanted and not generations_file,
            "generations": len(e["rows"]), "prompts": len({r.get("eval_line") for r in e["rows"]}),
            "finish_reasons": _count(r.get("finish_reason") for r in e["rows"]),
            "chat_format": next((r["chat_format"] for r in e["rows"] if r.get("chat_format")), None),
            "scan": e["result"].summary["artifacts"], "exit_code": e["result"].exit_code,
            "examples": examples(e["result"], e["scanned"], pats),
            "side_by_side": [{"eval_line": r.get("eval_line"), "output": r.get("output"),
                              "output_skipped": r.get("output_skipped"), "finish_reason": r.get("finish_reason")}
                             for r in e["rows"] if r.get("mode") == "greedy"][:12],
        } for name, e in engines.items()},
    }
    data["exit_code"] = max([data["exit_code"]] + [e["result"].exit_code for n, e in engines.items() if n in wanted])
    if data["exit_code"] and data["verdict"] == "pass":
        data["verdict"] = "fail"
    json_path, html_path = out / "report.json", out / "report.html"
    _atomic(json_path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")
    _atomic(html_path, render_html(data))
    return Report(data, result, out, json_path, html_path)


def _count(xs) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in xs:
        out[str(x)] = out.get(str(x), 0) + 1
    return out


def _atomic(p: Path, text: str) -> None:
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(p)


def render_terminal(rep: Report, *, color: bool = False, width: int = 110) -> str:
    """A rich summary: rates per artifact and group, verdict, where the files are."""
    import io

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    buf = io.StringIO()
    con = Console(file=buf, force_terminal=color, no_color=not color, width=width, highlight=False)
    art = rep.data["scan"]
    groups = sorted(art.get("groups", {}))
    t = Table(title=f"template artifacts: {rep.data['run_dir']}", header_style="bold")
    t.add_column("code")
    t.add_column("artifact")
    for g in groups:
        t.add_column(g, justify="right")
    t.add_column("overall", justify="right")
    t.add_column("threshold", justify="right")
    for c in A_CODES:
        over = c in art["over_threshold"]
        cells = [f"{art['groups'][g]['rates'][c]:.1%}" for g in groups]
        t.add_row(c, RULES[c].name, *cells, Text(f"{art['rates'][c]:.1%}", style="bold red" if over else ""),
                  f"{art['thresholds'][c]:.1%}")
    con.print(t)
    engines = rep.data.get("engines") or {}
    if len(engines) > 1:
        et = Table(title="side by side: greedy generations, special tokens skipped / overall", header_style="bold")
        et.add_column("code")
        for name, e in engines.items():
            et.add_column(f"{name} ({e['generations']} gen.)", justify="right")
        for c in A_CODES:
            cells = [f"{e['scan'].get('groups', {}).get('greedy/skipped', {}).get('rates', {}).get(c, 0):.1%} / "
                     f"{e['scan']['rates'][c]:.1%}" for e in engines.values()]
            if any(not x.startswith("0.0% / 0.0%") for x in cells):
                et.add_row(c, *cells)
        et.add_row("any", *[f"{e['scan']['any_artifact_rate']:.1%}" for e in engines.values()])
        con.print(et)
    elif rep.data.get("engine") == "llamacpp":
        con.print(Text("  generated through llama.cpp from export/model.gguf (chat format "
                       f"{engines.get('llamacpp', {}).get('chat_format')})", style="dim"))
    stop = rep.data.get("stop_check") or {"passed": True}
    ok = rep.data.get("verdict", art["verdict"]) == "pass" and stop["passed"]
    line = Text("PASS" if ok else "FAIL", style="bold green" if ok else "bold red")
    line.append(f"  {art['headline']}" + (f" ({rep.data.get('engine')})" if len(engines) > 1 else ""))
    con.print(line)
    for name, e in engines.items():
        if name != rep.data.get("engine") and len(engines) > 1:
            con.print(Text(f"      {e['scan']['headline']} ({name}"
                           + (", from the earlier report's generations" if not e.get("generated_now") else "")
                           + ")"))
    if stop.get("message"):
        con.print(Text(f"  stop ids: {stop['message']}", style="" if stop["passed"] else "bold red"))
    if rep.data.get("forced"):
        con.print(Text("  trained with --force: the data was not approved by the gate", style="yellow"))
    con.print(Text(f"  {rep.json_path}\n  {rep.html_path}", style="dim"))
    return buf.getvalue()
