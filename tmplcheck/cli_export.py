"""``tmplcheck export RUN_DIR`` (GGUF + Modelfile) and ``tmplcheck verify-model PATH`` (G and X codes).

Exit codes follow the gate: 0 nothing over warning level, 1 an error finding, 2 usage error or the tool failed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tmplcheck.cli import FORMATS, ToolFailure, write_output


def _echo(s: str) -> None:
    click.echo(s, err=True)


@click.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--outtype", type=click.Choice(["f32", "f16", "bf16", "q8_0"]), default="f16", show_default=True,
              help="Tensor type the converter writes.")
@click.option("--quantize", type=click.Choice(["q8_0"]), help="Quantize (the converter's own q8_0); same as "
                                                               "--outtype q8_0.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Where to write (default RUN_DIR/export).")
@click.option("--force", is_flag=True, help="Replace an existing export folder.")
def export_cmd(run_dir, outtype, quantize, out_dir, force):
    """Write RUN_DIR/export/: model.gguf made with llama.cpp's convert_hf_to_gguf.py, carrying the validated template,
    the end-of-turn ids as eos/eot and the template's BOS as add_bos_token; an Ollama Modelfile; export.json.

    The export is then verified as `tmplcheck verify-model` would (exit 1 on an error finding)."""
    from tmplcheck.trainer.export import ExportError, export_run

    try:
        res = export_run(Path(run_dir), outtype=quantize or outtype, out_dir=Path(out_dir) if out_dir else None,
                         info=_echo, force=force)
    except ExportError as e:
        raise ToolFailure(str(e)) from None
    except ImportError as e:
        from tmplcheck.cli import missing_extra

        raise missing_extra("train", "tmplcheck export", e) from None
    m = res.manifest
    md = m["metadata"]
    click.echo(f"{res.gguf}  ({m['bytes'] / 1e6:.1f} MB, {m['tensors']} tensors, {m['outtype']})")
    click.echo(f"  chat_template: {m['template']['name']} (sha256 {m['template']['sha256'][:12]})")
    eot = ", ".join(f"{s} {i}" for s, i in m["end_of_turn"].items())
    click.echo("  stop ids: " + ", ".join(f"{k.split('.')[-1]}={v}" for k, v in md.items()
                                           if k.endswith(("eos_token_id", "eot_token_id", "eom_token_id")))
               + (f"  (end-of-turn {eot})" if eot else "  (the template names no end-of-turn: the converter's eos)"))
    click.echo(f"  add_bos_token: {str(md['ggml.add_bos_token']).lower()} (training rows start with "
               f"{m['training_bos']} BOS)")
    if res.modelfile:
        click.echo(f"{res.modelfile}  (stops: {', '.join(m['end_of_turn']) or 'none: the template has no end-of-turn'})")
    for n in res.notes:
        click.echo(f"  note: {n}")
    errors = [f for f in res.findings if f.severity.value == "error"]
    click.echo(f"verify-model: {'PASS' if not errors else 'FAIL'} ("
               + (", ".join(f"{c}" for c in m["verify"]["codes"]) or "no finding") + f") in {m['seconds']}s")
    for f in errors[:10]:
        click.echo(f"  {f.code} {f.path}: {f.message}")
    sys.exit(1 if errors else 0)


def _expected(path: Path, run_dir, template, tokenizer, data, max_rows):
    """The validated side: RUN_DIR's (explicit, or the run an export folder sits in), else --template/--tokenizer."""
    from tmplcheck.validator import serving as S

    rows = []
    if run_dir is None and template is None:
        for cand in (path if path.is_dir() else path.parent, (path if path.is_dir() else path.parent).parent):
            if (cand / "run.json").is_file():
                run_dir = str(cand)
                break
    if run_dir is not None and template is None:
        from tmplcheck.artifacts.report import ReportError, load_run_template
        from tmplcheck.trainer import RunDirError, read_run_config
        from tmplcheck.trainer.export import approved_rows
        from tmplcheck.validator.tokenizer import load_tokenizer

        try:
            run = read_run_config(run_dir)
            tmpl = load_run_template(Path(run_dir), run)
        except (RunDirError, ReportError) as e:
            raise click.UsageError(f"--run {run_dir}: {e}") from None
        tok = load_tokenizer(str(Path(run_dir) / "tokenizer")) if (Path(run_dir) / "tokenizer").is_dir() else None
        if data is None:
            rows = approved_rows(Path(run_dir), run, max_rows)
        origin = f"run {run_dir}" + (" (approved)" if run.get("approval") else " (trained with --force)")
    elif template is not None:
        from tmplcheck.cli import load_template_option, load_tokenizer_option

        tmpl = load_template_option(template)
        tok = load_tokenizer_option(tokenizer or tmpl.meta.default_tokenizer) \
            if (tokenizer or tmpl.meta.default_tokenizer) else None
        origin = "--template " + template
    else:
        raise click.UsageError("say what the model must match: --run RUN_DIR, or --template (and --tokenizer); "
                               "PATH is not inside a run directory")
    if data is not None:
        from tmplcheck.validator.ingest import usable_conversations

        rows = usable_conversations(data, max_rows)
    return S.Expected(tmpl, tok, rows=rows, origin=origin)


def verify_path(path: Path, exp) -> tuple[list, list[str]]:
    """Findings for PATH (a GGUF, a Modelfile, a model folder, or an export folder holding a GGUF and a Modelfile)
    and the list of what was checked."""
    from tmplcheck.validator import serving as S
    from tmplcheck.validator.findings import finding
    from tmplcheck.validator.gguf_header import GGUFHeaderError, read_header

    findings, checked = [], []

    def gguf(p: Path):
        try:
            h = read_header(p)
        except GGUFHeaderError as e:
            findings.append(finding("G009", str(e), path=str(p)))
            return None
        checked.append(str(p))
        m = S.gguf_meta(h.fields, str(p))
        findings.extend(S.check_model(exp, m))
        return m

    def modelfile(p: Path):
        text = p.read_text(encoding="utf-8", errors="replace")
        from tmplcheck.validator.gotemplate import ModelfileError, parse_modelfile

        add_bos = None
        try:
            mf = parse_modelfile(text)
            src = Path(mf.from_ or "")
            src = src if src.is_absolute() else p.parent / src
            if src.suffix == ".gguf" and src.is_file():
                m = gguf(src)
                add_bos = m.add_bos if m else None
            elif src.suffix == ".gguf":
                findings.append(finding("G009", f"FROM {mf.from_}: no such file next to the Modelfile",
                                        path=str(p), line=mf.from_line))
        except ModelfileError:
            pass   # check_modelfile reports it
        checked.append(str(p))
        findings.extend(S.check_modelfile(exp, text, path=str(p), add_bos=add_bos))

    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if (path / "Modelfile").is_file():
            modelfile(path / "Modelfile")
            done = {str(x) for x in checked}
            for g in ggufs:
                if str(g) not in done:
                    gguf(g)
        elif ggufs:
            for g in ggufs:
                gguf(g)
        elif (path / "tokenizer_config.json").is_file() or (path / "config.json").is_file():
            from tmplcheck.validator.tokenizer import load_tokenizer

            m = S.folder_meta(path, load_tokenizer)
            checked.append(str(path))
            findings.extend(S.check_model(exp, m))
        else:
            findings.append(finding("G009", "not a model folder (no tokenizer_config.json, config.json, *.gguf or "
                                            "Modelfile)", path=str(path)))
    elif path.suffix == ".gguf" or path.read_bytes()[:4] == b"GGUF":
        gguf(path)
    else:
        modelfile(path)
    return findings, checked


@click.command("verify-model")
@click.argument("path", type=click.Path(exists=True))
@click.option("--run", "run_dir", type=click.Path(file_okay=False, exists=True),
              help="The run the model was trained in (its template, tokenizer and approved data). Default: the run "
                   "an export folder sits in.")
@click.option("--template", "-t", help="The validated template, when there is no run directory.")
@click.option("--tokenizer", "-k", help="Its tokenizer (default: the template's).")
@click.option("--data", type=click.Path(dir_okay=False, exists=True),
              help="Approved rows to render (default: the run's dataset when unchanged; else probes only).")
@click.option("--max-rows", type=int, default=200, show_default=True, help="Render at most N approved rows.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the report to FILE.")
@click.option("--select", multiple=True, help="Only these codes/families (G, X, G003...); repeatable.")
@click.option("--ignore", multiple=True, help="Leave these codes/families out; repeatable.")
@click.option("--max-findings", type=int, help="Show at most N findings (all are still counted).")
def verify_model_cmd(path, run_dir, template, tokenizer, data, max_rows, fmt, output, select, ignore, max_findings):
    """Does the model at PATH (a GGUF, a model folder, a Modelfile, or an export folder) serve the template it was
    trained on? G codes for the template, stop ids, BOS and Modelfile; X codes for how llama.cpp's built-in format
    (no --jinja) renders the approved rows. Exit 0 clean, 1 an error finding, 2 usage error."""
    from tmplcheck.validator import serving as S
    from tmplcheck.validator.codes import matches
    from tmplcheck.validator.gate import GateResult
    from tmplcheck.validator.report import report

    p = Path(path)
    exp = _expected(p, run_dir, template, tokenizer, data, max_rows)
    try:
        findings, checked = verify_path(p, exp)
    except OSError as e:
        raise ToolFailure(f"{path}: {e}") from None
    sel, ign = [s for x in select for s in x.split(",")], [s for x in ignore for s in x.split(",")]
    findings = [f for f in findings if (not sel or matches(f.code, sel)) and not matches(f.code, ign)]
    findings = S.fold_per_file(findings)
    findings.sort(key=lambda f: (f.path.startswith("<") or f.path.endswith(".jsonl"), f.path, f.line, f.code))
    summary = S.summarize(findings, checked or [str(p)], exp)
    result = GateResult(str(p), findings, summary)
    color = fmt == "text" and output is None and sys.stdout.isatty()
    write_output(report(fmt, [result], max_findings=max_findings, color=color), output)
    sys.exit(result.exit_code)


COMMANDS = [export_cmd, verify_model_cmd]
