"""A gate result as HTML for a notebook (``tmplcheck.Result._repr_html_``): the verdict, the findings as a table
(located as the text report locates them: ``path:line`` or ``path:row N (row group G)``), and the count of each
code. Plain HTML with inline styles: no JavaScript, nothing fetched."""

from __future__ import annotations

from html import escape
from itertools import islice

from tmplcheck.validator.codes import RULES
from tmplcheck.validator.findings import Severity
from tmplcheck.validator.gate import GateResult
from tmplcheck.validator.sources import location_text

_COLOR = {Severity.ERROR: "#c62828", Severity.WARNING: "#b26a00", Severity.INFO: "#00838f"}
_CELL = "padding:2px 8px;text-align:left;vertical-align:top;border-bottom:1px solid #ddd"


def result_html(r: GateResult, *, max_findings: int = 50) -> str:
    s = r.summary
    ok = r.passed
    out = [f'<div class="tmplcheck-result"><p><b style="color:{"#2e7d32" if ok else "#c62828"}">'
           f'{"PASS" if ok else "FAIL"}</b> <code>{escape(r.path)}</code>: {s["rows"]} rows, {s["errors"]} errors, '
           f'{s["warnings"]} warnings, {s["infos"]} infos; {s["rows_with_errors"]} rows with errors</p>']
    heads = [f'<li>{escape(key)}: {escape(str(val["headline"]))}</li>' for key, val in s.items()
             if isinstance(val, dict) and key not in ("by_code", "dataset") and val.get("headline")]
    if heads:
        out.append('<ul style="color:#666;margin:0 0 6px 0">' + "".join(heads) + "</ul>")
    total = len(r.findings)
    if total:
        out.append(f'<table style="border-collapse:collapse;font-size:90%"><thead><tr>'
                   + "".join(f'<th style="{_CELL}">{h}</th>' for h in ("where", "code", "severity", "message",
                                                                          "pointer")) + "</tr></thead><tbody>")
        for f in islice(r.findings, max_findings):
            hint = f'<br><span style="color:#666">hint: {escape(f.hint)}</span>' if f.hint else ""
            out.append(f'<tr><td style="{_CELL}"><code>{escape(location_text(f))}</code></td>'
                       f'<td style="{_CELL}"><b>{escape(f.code)}</b></td>'
                       f'<td style="{_CELL};color:{_COLOR[f.severity]}">{f.severity.value}</td>'
                       f'<td style="{_CELL}">{escape(f.message)}{hint}</td>'
                       f'<td style="{_CELL}"><code>{escape(f.pointer)}</code></td></tr>')
        out.append("</tbody></table>")
        if total > max_findings:
            out.append(f'<p style="color:#666">… {total - max_findings} more findings not shown '
                       "(<code>result.findings</code> holds them all)</p>")
        per_file = s.get("per_file_rows") or {}
        out.append(f'<details><summary>by code</summary><table style="border-collapse:collapse;font-size:90%">'
                   + "".join(f'<tr><td style="{_CELL}"><b>{escape(c)}</b></td>'
                             f'<td style="{_CELL}">{escape(RULES[c].name)}</td>'
                             f'<td style="{_CELL};color:{_COLOR[RULES[c].severity]}">{RULES[c].severity.value}</td>'
                             f'<td style="{_CELL}">{f"once, {per_file[c]} rows" if c in per_file else n}</td></tr>'
                             for c, n in s["by_code"].items()) + "</table></details>")
    out.append("</div>")
    return "".join(out)
