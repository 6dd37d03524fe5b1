"""``tmplcheck scan GENERATIONS.jsonl`` and ``tmplcheck report RUN_DIR``: leaked template artifacts (A codes).

Exit codes follow the gate: 0 no artifact over its threshold, 1 an artifact rate passes its threshold (or a row is
unreadable), 2 usage error or the tool failed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tmplcheck.cli import FORMATS, write_output
from tmplcheck.config import check_options

_THRESHOLD_HELP = ("Allowed share of generations for a code, CODE=RATE (A001=0.05, A=1%, all=0.1); repeatable. "
                   "Default 0: any artifact fails.")


def _thresholds(values: tuple[str, ...], settings=None) -> dict[str, float]:
    """``--threshold`` specs; with the check settings, an A code that --ignore names, or that a --select naming
    A codes leaves out (flags or the settings file), never fails (threshold 100 %, unless --threshold names it).
    A --select of other families only (a settings file written for the gate) leaves every A code in."""
    from tmplcheck.artifacts.scan import A_CODES, parse_thresholds
    from tmplcheck.validator.codes import matches

    try:
        th = parse_thresholds(values)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if settings is not None:
        sel = settings.select if any(matches(c, settings.select) for c in A_CODES) else []
        for c in A_CODES:
            if c not in th and ((sel and not matches(c, sel)) or matches(c, settings.ignore)):
                th[c] = 1.0
    return th


def _settings(path, config_path, select, ignore):
    from tmplcheck.config import resolve_or_exit

    return resolve_or_exit(path, config_path, select=select, ignore=ignore)


def _load_patterns(template: str, tokenizer: str | None):
    from tmplcheck.artifacts.patterns import patterns_for
    from tmplcheck.cli import load_template_option, load_tokenizer_option

    tmpl = load_template_option(template)
    tok = load_tokenizer_option(tokenizer) if tokenizer else None
    return patterns_for(tmpl.meta, tokenizer=tok)


@click.command("scan")
@click.argument("generations", type=click.Path(dir_okay=False))
@click.option("--template", "-t", required=True, help="The template the model was trained with (name or path).")
@click.option("--tokenizer", "-k", help="Tokenizer: with it, rows that carry output_ids are judged on their ids "
              "(special ids, BOS, headers, stop ids); without it only the template's control-token strings count.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the report to FILE.")
@click.option("--threshold", multiple=True, help=_THRESHOLD_HELP)
@click.option("--warn-only", is_flag=True, help="Report artifacts as warnings and exit 0.")
@click.option("--max-findings", type=int, help="Show at most N findings (all are still counted).")
@click.option("--group", type=click.Choice(["line", "code"]), default="code", show_default=True)
@check_options(max_length=False, for_train=False, add_special_tokens=False)
def scan_cmd(generations, template, tokenizer, fmt, output, threshold, warn_only, max_findings, group, config_path,
             select, ignore):
    """Scan GENERATIONS (JSONL rows {"prompt", "output", "output_ids"?, "finish_reason"?}) for template artifacts.

    --select/--ignore (or the settings file's) decide which A codes can fail the scan."""
    from tmplcheck.artifacts.scan import scan_file
    from tmplcheck.validator.report import report

    th = _thresholds(threshold, _settings(generations, config_path, select, ignore))
    p = Path(generations)
    if not p.exists():
        raise click.UsageError(f"{generations}: no such file")
    pats = _load_patterns(template, tokenizer)
    result = scan_file(p, pats, display_path=generations, thresholds=th, warn_only=warn_only)
    color = fmt == "text" and output is None and sys.stdout.isatty()
    write_output(report(fmt, [result], max_findings=max_findings, group=group, color=color), output)
    sys.exit(result.exit_code)


@click.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--threshold", multiple=True, help=_THRESHOLD_HELP)
@click.option("--samples", type=int, default=1, show_default=True,
              help="Sampled generations per eval prompt (besides the greedy one); 0 for greedy only.")
@click.option("--max-prompts", type=int, help="Use at most N held-out prompts.")
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--temperature", type=float, default=0.8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Where to write (default RUN_DIR/report).")
@click.option("--generations", "gen_file", type=click.Path(dir_okay=False, exists=True),
              help="Re-scan these generations (written by an earlier report) instead of generating.")
@click.option("--warn-only", is_flag=True, help="Report artifacts as warnings and exit 0.")
@click.option("--engine", type=click.Choice(["hf", "llamacpp", "both"]), default="hf", show_default=True,
              help="Generate with the trained model (transformers), with RUN_DIR/export/model.gguf through "
                   "llama-cpp-python's chat completion (`tmplcheck export` first), or both, side by side.")
@check_options(max_length=False, for_train=False, add_special_tokens=False)
def report_cmd(run_dir, threshold, samples, max_prompts, max_new_tokens, temperature, seed, out_dir, gen_file,
               warn_only, engine, config_path, select, ignore):
    """Generate on RUN_DIR's held-out prompts, scan the outputs, write report.json and report.html.

    Exit 1 when an artifact rate passes its threshold or a saved generation config misses an end-of-turn id of the
    run's template (the stop-id check). --select/--ignore (or the settings file's, searched from RUN_DIR) decide
    which A codes can fail the report.
    """
    from tmplcheck.artifacts.report import ReportError, build_report

    th = _thresholds(threshold, _settings(Path(run_dir) / "run.json", config_path, select, ignore))
    try:
        rep = build_report(Path(run_dir), out_dir=Path(out_dir) if out_dir else None, thresholds=th,
                           samples=samples, max_prompts=max_prompts, max_new_tokens=max_new_tokens,
                           temperature=temperature, seed=seed, generations_file=gen_file, warn_only=warn_only,
                           engine=engine)
    except ReportError as e:
        raise click.ClickException(str(e)) from None
    except ImportError as e:
        from tmplcheck.cli import missing_extra

        raise missing_extra("train", "tmplcheck report", e) from None
    from tmplcheck.artifacts.report import render_terminal

    click.echo(render_terminal(rep, color=sys.stdout.isatty()), nl=False)
    sys.exit(rep.exit_code)


COMMANDS = [scan_cmd, report_cmd]
