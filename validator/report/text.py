"""Human report with rich: findings grouped by line or by code, then a summary table. Plain when piped."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tmplcheck.validator.codes import RULES
from tmplcheck.validator.textshow import escape_controls
from tmplcheck.validator.findings import Finding, Severity
from tmplcheck.validator.gate import GateResult
from tmplcheck.validator.sources import location_text

_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def visible(s: str, limit: int = 80) -> str:
    """Show control characters and edges of a snippet the way a reviewer needs to see them."""
    s = escape_controls(s)   # only control characters: "…" and "é" stay themselves
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _finding_line(f: Finding) -> Text:
    t = Text()
    loc = location_text(f)   # path:line, or path:row N (row group G) for a parquet/Arrow/in-memory row
    t.append(loc, style="bold")
    t.append(": ")
    t.append(f.code, style=_STYLE[f.severity])
    t.append(f" [{f.severity.value}] ", style=_STYLE[f.severity])
    t.append(f.message)
    if f.pointer:
        t.append(f"  {f.pointer}", style="dim")
    if f.hint:
        t.append(f"\n    hint: {f.hint}", style="dim")
    return t


def iter_text(results: Sequence[GateResult], *, max_findings: int | None = None, group: str = "line",
              color: bool | None = None, width: int | None = None, **_) -> Iterator[str]:
    """Findings (by line, or grouped by code), then a summary table per file; streamed a finding at a time."""
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=bool(color), no_color=not color, width=width or 120,
                      highlight=False, soft_wrap=True)

    def flush() -> str:
        out = buf.getvalue()
        buf.seek(0)
        buf.truncate()
        return out

    budget = [max_findings]

    def take() -> bool:
        if budget[0] is None:
            return True
        if budget[0] <= 0:
            return False
        budget[0] -= 1
        return True

    shown = 0
    for r in results:
        if group == "code":
            for code in sorted(r.summary["by_code"]):
                if budget[0] is not None and budget[0] <= 0:
                    break
                rule = RULES[code]
                console.print(Text(f"{code} {rule.name}: {rule.summary} ({r.summary['by_code'][code]})",
                                   style=_STYLE[rule.severity]))
                for f in r.findings:   # one streaming pass per code that fired
                    if f.code != code:
                        continue
                    if not take():
                        break
                    console.print(Text("  ") + _finding_line(f))
                    shown += 1
                    yield flush()
        else:
            for f in r.findings:
                if not take():
                    break
                console.print(_finding_line(f))
                shown += 1
                yield flush()
    total_f = sum(len(x.findings) for x in results)
    if shown < total_f:
        console.print(Text(f"… {total_f - shown} more findings not shown (--max-findings {max_findings})",
                           style="dim"))
    for r in results:
        for part in summary_renderables(r):
            console.print(part)
    yield flush()


def summary_renderables(r: GateResult) -> list:
    """A file's summary as rich renderables: the table of codes (when any fired), the verdict line and each
    stage's headline (the text report's end; ``tmplcheck.Result`` shows the same in a terminal)."""
    s = r.summary
    out: list = []
    table = Table(title=f"tmplcheck {r.path}", show_header=True, header_style="bold")
    table.add_column("code")
    table.add_column("name")
    table.add_column("severity")
    table.add_column("count", justify="right")
    per_file = s.get("per_file_rows") or {}
    for code, n in s["by_code"].items():
        rule = RULES[code]
        count = f"once, {per_file[code]} rows" if code in per_file else str(n)
        table.add_row(code, rule.name, Text(rule.severity.value, style=_STYLE[rule.severity]), count)
    if s["by_code"]:
        out.append(table)
    verdict = Text("PASS", style="bold green") if r.passed else Text("FAIL", style="bold red")
    line = Text()
    line.append_text(verdict)
    line.append(f"  {r.path}: {s['rows']} rows, {s['errors']} errors, {s['warnings']} warnings, "
                f"{s['infos']} infos; {s['rows_with_errors']} rows with errors")
    out.append(line)
    for key, val in s.items():
        if isinstance(val, dict) and key not in ("by_code", "dataset") and val.get("headline"):
            out.append(Text(f"  {key}: {val['headline']}", style="dim"))
    return out


def finding_renderables(findings, max_findings: int | None = None, total: int | None = None) -> list:
    """Findings as the text report prints them, a line each, cut at ``max_findings`` (with a line saying how
    many more there are)."""
    out = []
    for k, f in enumerate(findings):
        if max_findings is not None and k >= max_findings:
            break
        out.append(_finding_line(f))
    total = total if total is not None else len(findings)
    if len(out) < total:
        out.append(Text(f"… {total - len(out)} more findings not shown", style="dim"))
    return out
