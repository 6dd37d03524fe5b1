"""Machine-readable reporters: json, jsonl, junit, sarif, github workflow annotations."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from xml.sax.saxutils import escape, quoteattr

from tmplcheck import __version__
from tmplcheck.validator.codes import RULES
from tmplcheck.validator.findings import Finding, Severity
from tmplcheck.validator.gate import GateResult


def _all(results: Sequence[GateResult], max_findings: int | None) -> Iterator[Finding]:
    """Every finding of every file, streamed (a gate's findings may live on disk), cut at max_findings."""
    fs = itertools.chain.from_iterable(r.findings for r in results)
    return fs if max_findings is None else itertools.islice(fs, max(max_findings, 0))


def combined_summary(results: Sequence[GateResult]) -> dict:
    if len(results) == 1:
        return results[0].summary
    keys = ("rows", "rows_with_errors", "errors", "warnings", "infos")
    s = {k: sum(r.summary.get(k, 0) for r in results) for k in keys}
    s["passed"] = all(r.passed for r in results)
    s["tmplcheck_version"] = __version__
    s["files"] = [r.summary for r in results]
    return s


def iter_json(results: Sequence[GateResult], *, max_findings: int | None = None, **_) -> Iterator[str]:
    """``{"summary": ..., "findings": [...]}``, written one finding at a time."""
    summary = dict(combined_summary(results))
    total = sum(len(r.findings) for r in results)
    summary["findings_shown"] = total if max_findings is None else min(total, max(max_findings, 0))
    head = json.dumps({"summary": summary}, ensure_ascii=False, indent=2)
    yield head[:-2] + ',\n  "findings": ['
    sep = "\n    "
    for f in _all(results, max_findings):
        yield sep + json.dumps(f.to_dict(), ensure_ascii=False)
        sep = ",\n    "
    yield ("\n  ]" if sep != "\n    " else "]") + "\n}\n"


def iter_jsonl(results: Sequence[GateResult], *, max_findings: int | None = None, **_) -> Iterator[str]:
    return (json.dumps(f.to_dict(), ensure_ascii=False) + "\n" for f in _all(results, max_findings))


def _xml_text(s: str) -> str:
    # XML 1.0 cannot carry most control characters, even escaped: show them as \\xNN
    return "".join(c if (c in "\t\n\r" or ord(c) >= 0x20) and not 0xD800 <= ord(c) <= 0xDFFF else f"\\x{ord(c):02x}"
                   for c in s)


def iter_junit(results: Sequence[GateResult], *, max_findings: int | None = None, **_) -> Iterator[str]:
    """One testsuite per file, one testcase per finding (failures for errors); a clean file gets one passing case."""
    out = ['<?xml version="1.0" encoding="UTF-8"?>']
    total = sum(len(r.findings) or 1 for r in results)
    fails = sum(r.errors for r in results)
    out.append(f'<testsuites name="tmplcheck" tests="{total}" failures="{fails}" errors="0">')
    budget = max_findings
    for r in results:
        shown = len(r.findings) if budget is None else min(len(r.findings), max(budget, 0))
        if budget is not None:
            budget -= shown
        fs = itertools.islice(r.findings, shown)
        nfail = sum(1 for f in itertools.islice(r.findings, shown) if f.severity is Severity.ERROR)
        out.append(f'  <testsuite name={quoteattr(_xml_text(r.path))} tests="{shown or 1}" failures="{nfail}" '
                   f'errors="0" skipped="0">')
        if not shown:
            out.append(f'    <testcase classname={quoteattr(_xml_text(r.path))} name="tmplcheck"/>')
        for f in fs:
            name = f"{f.code} line {f.line}" + (f" {f.pointer}" if f.pointer else "")
            out.append(f'    <testcase classname={quoteattr(_xml_text(r.path))} name={quoteattr(_xml_text(name))} '
                       f'file={quoteattr(_xml_text(r.path))} line="{f.line}">')
            body = _xml_text(f"{f.path}:{f.line}: {f.code} {f.message}" + (f"\nhint: {f.hint}" if f.hint else ""))
            msg = quoteattr(_xml_text(f"{f.code}: {f.message}"))
            if f.severity is Severity.ERROR:
                out.append(f'      <failure message={msg} type="{f.code}">{escape(body)}</failure>')
            else:
                out.append(f"      <system-out>{escape(f'[{f.severity.value}] ' + body)}</system-out>")
            out.append("    </testcase>")
            yield "\n".join(out) + "\n"
            out = []
        out.append("  </testsuite>")
    out.append("</testsuites>")
    yield "\n".join(out) + "\n"


_SARIF_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}


def iter_sarif(results: Sequence[GateResult], *, max_findings: int | None = None, **_) -> Iterator[str]:
    fired = sorted({f.code for f in _all(results, max_findings)})
    index = {c: i for i, c in enumerate(fired)}
    rules = []
    for c in fired:
        r = RULES[c]
        rules.append({
            "id": c, "name": r.name,
            "shortDescription": {"text": r.summary},
            "fullDescription": {"text": r.explanation.strip()},
            "help": {"text": r.explanation.strip()},
            "defaultConfiguration": {"level": _SARIF_LEVEL[r.severity]},
        })
    def result(f: Finding) -> dict:
        region = {"startLine": max(f.line, 1)}
        if f.column:
            region["startColumn"] = f.column
        item = {
            "ruleId": f.code, "ruleIndex": index[f.code], "level": _SARIF_LEVEL[f.severity],
            "message": {"text": f.message + (f" (hint: {f.hint})" if f.hint else "")},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": f.path or "."}, "region": region}}],
        }
        props = {"pointer": f.pointer} if f.pointer else {}
        for key in ("row", "row_group", "file"):   # a row of a parquet/Arrow/in-memory source (startLine: row + 1)
            if key in f.data:
                props[key] = f.data[key]
        if "rows" in f.data:   # a per-file finding: how many rows it applies to, and the first of them
            props.update(rows=f.data["rows"], lines=f.data.get("lines", []))
        if props:
            item["properties"] = props
        return item

    doc = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "tmplcheck", "version": __version__,
                                "informationUri": "https://github.com/tmplcheck/tmplcheck", "rules": rules}},
            "results": [],
        }],
    }
    head = json.dumps(doc, ensure_ascii=False, indent=2)
    cut = head.rindex('"results": []') + len('"results": [')
    yield head[:cut]
    sep = "\n        "
    for f in _all(results, max_findings):
        yield sep + json.dumps(result(f), ensure_ascii=False)
        sep = ",\n        "
    yield ("\n      " if sep != "\n        " else "") + head[cut:] + "\n"


def _gh_escape(s: str, prop: bool = False) -> str:
    s = s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        s = s.replace(":", "%3A").replace(",", "%2C")
    return s


_GH_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


def iter_github(results: Sequence[GateResult], *, max_findings: int | None = None, **_) -> Iterator[str]:
    for f in _all(results, max_findings):
        props = [f"file={_gh_escape(f.path, True)}"]
        if f.line:
            props.append(f"line={f.line}")
        if f.column:
            props.append(f"col={f.column}")
        props.append(f"title={_gh_escape(f.code + ' ' + RULES[f.code].name, True)}")
        msg = f.message + (f" [{f.pointer}]" if f.pointer else "") + (f" hint: {f.hint}" if f.hint else "")
        yield f"::{_GH_LEVEL[f.severity]} {','.join(props)}::{_gh_escape(msg)}\n"
