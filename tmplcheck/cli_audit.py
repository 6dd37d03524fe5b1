"""``tmplcheck audit``: what a tokenized dataset (from TRL, Unsloth, axolotl, a collator) actually trains.

Exit codes as the gate: 0 no error findings, 1 error findings, 2 usage error or the tool failed.
"""

from __future__ import annotations

import json
import sys

import click

from tmplcheck.cli import FORMATS


def load_pair(template: str | None, tokenizer: str | None):
    from tmplcheck.cli_tokens import _load_pair

    return _load_pair(template, tokenizer)


def structure_for(tmpl, tok, pad_id: int | None):
    from tmplcheck.validator.tokenized_audit import build_structure

    try:
        return build_structure(tmpl, tok, pad_id=pad_id)
    except ValueError as e:
        raise click.UsageError(f"--template: {e}") from None


def show_row(ra, tok, index: int, fmt: str) -> None:
    """One audited row: each token with its turn, the expected mask beside the actual one; mismatches marked."""
    rows = []
    for k, tid in enumerate(ra.ids):
        exp = ra.expected[k]
        rows.append({"index": k, "id": tid, "token": tok.id_to_token(tid), "region": ra.regions[k],
                     "expected": exp, "trained": ra.actual[k], "pad": ra.pads[k],
                     "mismatch": exp is not None and exp != ra.actual[k] and not ra.pads[k]})
    if fmt == "json":
        click.echo(json.dumps({"row": index, "tokens": rows, "findings": [f.to_dict() for f in ra.findings]},
                              ensure_ascii=False, indent=1))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False, force_terminal=sys.stdout.isatty() or None)
    n_bad = sum(r["mismatch"] for r in rows)
    console.print(f"row {index}: {len(rows)} tokens, {sum(r['trained'] for r in rows)} trained, "
                  f"{sum(bool(r['expected']) for r in rows)} expected trained, {n_bad} differ")
    table = Table(show_header=True, header_style="bold", box=None)
    for c in ("#", "id", "token", "turn", "expected", "actual", ""):
        table.add_column(c)
    mark = {True: "train", False: "mask", None: "either"}
    for r in rows:
        style = "bold red" if r["mismatch"] else ("green" if r["trained"] else "dim")
        table.add_row(str(r["index"]), str(r["id"]), Text(repr(tok.decode([r["id"]]))[1:-1]), r["region"],
                      mark[r["expected"]], Text(mark[r["trained"]], style=style), "≠" if r["mismatch"] else "")
    console.print(table)
    for f in ra.findings:
        console.print(f"[bold red]{f.code}[/] {f.pointer} {f.message}")


def show_audited(data: str, rows, struct, tok, index: int, train_on: str, fmt: str) -> None:
    """Audit row ``index`` of ``rows`` and show it (``audit --show N``, ``show --tokenized --row N``); exits 1
    when the row has error findings or cannot be audited, 0 otherwise."""
    from tmplcheck.validator.tokenized_audit import audit_row

    for i, line, row in rows:
        if i == index:
            ra = audit_row(row, struct, index=i, path=data, line=line, train_on=train_on)
            if isinstance(ra, list):
                from tmplcheck.cli import Refusal

                raise Refusal("; ".join(f.message for f in ra))
            show_row(ra, tok, i, fmt)
            sys.exit(1 if any(f.severity.value == "error" for f in ra.findings) else 0)
    raise click.UsageError(f"{data} has no row {index}")


@click.command("audit")
@click.argument("data")
@click.option("--template", "-t", help="The template the pipeline rendered with (name, .jinja, model dir, GGUF).")
@click.option("--tokenizer", "-k", help="The tokenizer the pipeline used (name, model dir, tokenizer.json, GGUF).")
@click.option("--train-on", type=click.Choice(["all-assistant", "last-assistant"]), default="all-assistant",
              show_default=True, help="Which assistant turns should be trained.")
@click.option("--pad-id", type=int, help="The pad id (default: what padding positions hold, else the tokenizer's).")
@click.option("--split", help="The split of a DatasetDict folder or hub dataset (default: train).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the report to FILE (atomically).")
@click.option("--select", multiple=True, help="Only these codes (L, L00, L003, or names).")
@click.option("--ignore", multiple=True, help="Leave these codes out.")
@click.option("--exit-zero", is_flag=True, help="Exit 0 even when errors are found.")
@click.option("--max-findings", type=int, help="Show at most N findings (all are still counted).")
@click.option("--show", "show_index", type=int, help="Show row N (0-based): expected mask beside the actual one.")
def audit_cmd(data, template, tokenizer, train_on, pad_id, split, fmt, output, select, ignore, exit_zero,
              max_findings, show_index):
    """Audit what a tokenized dataset trains: DATA is JSONL/JSON, Parquet, Arrow, a save_to_disk folder or a
    cached hub id, with input_ids and labels (or assistant_masks / completion_mask) and optionally
    attention_mask / position_ids.

    Each row's turns are recovered from the template's headers and end-of-turn strings; every trained assistant
    answer and its end-of-turn must be trained, nothing else (L codes, `tmplcheck rule L`). Exit 0 clean, 1 error
    findings, 2 usage error.
    """
    from tmplcheck.cli import write_output
    from tmplcheck.config import resolve_or_exit
    from tmplcheck.tokenized_data import TokenizedReadError, read_tokenized
    from tmplcheck.validator.codes import matches
    from tmplcheck.validator.gate import GateResult
    from tmplcheck.validator.report import report_chunks
    from tmplcheck.validator.tokenized_audit import audit_rows

    st = resolve_or_exit(None, None, template=template, tokenizer=tokenizer)
    tmpl, tok = load_pair(st.template, st.tokenizer)
    struct = structure_for(tmpl, tok, pad_id)
    try:
        rows = read_tokenized(data, split=split)
        if show_index is not None:
            show_audited(data, rows, struct, tok, show_index, train_on, "json" if fmt == "json" else "text")
        findings, summary = audit_rows(rows, struct, path=data, train_on=train_on)
    except TokenizedReadError as e:
        raise click.UsageError(str(e)) from None
    keep = [f for f in findings if (not select or matches(f.code, list(select)))
            and not (ignore and matches(f.code, list(ignore)))]
    if len(keep) != len(findings):
        by_sev: dict[str, int] = {}
        by_code: dict[str, int] = {}
        for f in keep:
            by_sev[f.severity.value] = by_sev.get(f.severity.value, 0) + 1
            by_code[f.code] = by_code.get(f.code, 0) + 1
        summary.update(errors=by_sev.get("error", 0), warnings=by_sev.get("warning", 0),
                       infos=by_sev.get("info", 0), by_code=dict(sorted(by_code.items())),
                       passed=by_sev.get("error", 0) == 0,
                       rows_with_errors=len({f.data.get("row") for f in keep if f.severity.value == "error"}))
    result = GateResult(data, keep, summary)
    color = fmt == "text" and output is None and sys.stdout.isatty()
    write_output(report_chunks(fmt, [result], max_findings=max_findings, color=color), output)
    sys.exit(0 if exit_zero else result.exit_code)


COMMANDS = [audit_cmd]
