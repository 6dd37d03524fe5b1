"""``tmplcheck scan GENERATIONS.jsonl`` and ``tmplcheck report RUN_DIR``: leaked template artifacts (A codes).

Exit codes follow the gate: 0 no artifact over its threshold, 1 an artifact rate passes its threshold (or a row is
unreadable), 2 usage error or the tool failed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tmplcheck.cli import FORMATS, write_output

_THRESHOLD_HELP = ("Allowed share of generations for a code, CODE=RATE (A001=0.05, A=1%, all=0.1); repeatable. "
                   "Default 0: any artifact fails.")


def _thresholds(values: tuple[str, ...]) -> dict[str, float]:
    from tmplcheck.artifacts.scan import parse_thresholds

    try:
        return parse_thresholds(values)
    except ValueError as e:
        raise click.UsageError(str(e)) from None


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
def scan_cmd(generations, template, tokenizer, fmt, output, threshold, warn_only, max_findings, group):
    """Scan GENERATIONS (JSONL rows {"prompt", "output", "output_ids"?, "finish_reason"?}) for template artifacts."""
    from tmplcheck.artifacts.scan import scan_file
    from tmplcheck.validator.report import report

    th = _thresholds(threshold)
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
def report_cmd(run_dir, threshold, samples, max_prompts, max_new_tokens, temperature, seed, out_dir, gen_file,
               warn_only):
    """Generate on RUN_DIR's held-out prompts, scan the outputs, write report.json and report.html."""
    from tmplcheck.artifacts.report import ReportError, build_report

    th = _thresholds(threshold)
    try:
        rep = build_report(Path(run_dir), out_dir=Path(out_dir) if out_dir else None, thresholds=th,
                           samples=samples, max_prompts=max_prompts, max_new_tokens=max_new_tokens,
                           temperature=temperature, seed=seed, generations_file=gen_file, warn_only=warn_only)
    except ReportError as e:
        raise click.ClickException(str(e)) from None
    except ImportError as e:
        from tmplcheck.cli import missing_extra

        raise missing_extra("train", "tmplcheck report", e) from None
    from tmplcheck.artifacts.report import render_terminal

    click.echo(render_terminal(rep, color=sys.stdout.isatty()), nl=False)
    sys.exit(rep.exit_code)


COMMANDS = [scan_cmd, report_cmd]
