"""Scan generations for leaked template artifacts (A codes).

The checks themselves live in :mod:`tmplcheck.artifacts.checks` (one pure function per family of codes). File reading
reuses the gate's line reader, so file-level defects are the same D findings the gate reports; rows of the wrong
shape are A010. ``scan_file`` / ``scan_rows`` return a ``GateResult`` so the gate's reporters print it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tmplcheck import __version__
from tmplcheck.artifacts.checks import Generation, scan_generation
from tmplcheck.artifacts.patterns import ArtifactPatterns
from tmplcheck.validator.codes import RULES, matches
from tmplcheck.validator.findings import Finding, Severity, finding

A_CODES = tuple(c for c in RULES if c.startswith("A"))
# the codes that count as leaked artifacts (A010 is an unreadable row; infos such as A013 never fail a scan)
ARTIFACT_CODES = tuple(c for c in A_CODES if c != "A010" and RULES[c].severity is Severity.ERROR)


# ---------------------------------------------------------------------------------------------------- row parsing
_FINISH = ("stop", "length")


def parse_generation(obj: Any, *, path: str, line: int) -> tuple[Generation | None, list[Finding]]:
    """A decoded row -> Generation (None when the output is unusable) plus A010 findings; never raises."""
    bad: list[Finding] = []

    def invalid(msg: str, pointer: str = "") -> None:
        bad.append(finding("A010", msg, path=path, line=line, pointer=pointer))

    if not isinstance(obj, dict):
        kind = "null" if obj is None else {list: "array", str: "string", bool: "boolean"}.get(type(obj), "number")
        invalid(f"row is a JSON {kind}, expected an object with an 'output' field")
        return None, bad
    out = obj.get("output")
    if "output" not in obj:
        invalid(f"row has no 'output' field (keys: {', '.join(sorted(map(str, obj))[:6]) or 'none'})")
    elif not isinstance(out, str):
        invalid(f"'output' is {_kind(out)}, expected a string", "/output")
    prompt = obj.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        if not isinstance(prompt, list):
            invalid(f"'prompt' is {_kind(prompt)}, expected a string or a list of messages", "/prompt")
            prompt = None
        else:
            for i, m in enumerate(prompt):
                if not _message(m):
                    invalid(f"prompt message {i} is not a chat message (a 'role' string and a 'content' string, list "
                            "of parts or null, or 'tool_calls')", f"/prompt/{i}")
                    prompt = None
                    break
    ids = obj.get("output_ids")
    if ids is not None and not (isinstance(ids, list) and all(type(x) is int for x in ids)):
        k = next((i for i, x in enumerate(ids) if type(x) is not int), None) if isinstance(ids, list) else None
        invalid("'output_ids' must be a list of integers"
                + (f" (element {k} is {_kind(ids[k])})" if k is not None else f", got {_kind(ids)}"),
                "/output_ids" + (f"/{k}" if k is not None else ""))
        ids = None
    fr = obj.get("finish_reason")
    if fr is not None and fr not in _FINISH:
        invalid(f"'finish_reason' is {fr!r}, expected 'stop' or 'length'", "/finish_reason")
        fr = None
    if not isinstance(out, str):
        return None, bad
    extra = {k: v for k, v in obj.items() if k not in ("prompt", "output", "output_ids", "finish_reason")}
    return Generation(line=line, output=out, prompt=prompt, output_ids=ids, finish_reason=fr, path=path,
                      extra=extra), bad


def _message(m: Any) -> bool:
    """A message of the HF chat schema: a role, and content (a string, typed parts or null) or tool calls."""
    if not (isinstance(m, dict) and isinstance(m.get("role"), str)):
        return False
    c = m.get("content")
    return ("content" in m or "tool_calls" in m) and (c is None or isinstance(c, (str, list)))


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(type(v), "a number")


def read_generations(path: str | os.PathLike, *, display_path: str | None = None,
                     max_line_bytes: int | None = None) -> Iterator[tuple[Generation | None, list[Finding]]]:
    """Stream a JSONL (or .json list) file of generation rows; file defects become the gate's D findings."""
    from tmplcheck.validator import ingest

    shown = display_path or str(path)
    limit = max_line_bytes or ingest.DEFAULT_MAX_LINE_BYTES
    with open(Path(path), "rb") as fh:
        # the same framing as the gate's datasets: lines, or the elements of a top-level JSON list
        is_array, records = ingest.open_records(fh, path, max_line_bytes=limit, display_path=shown)
        for rec in records:
            if rec.data is None:
                yield None, rec.findings
                continue
            if not is_array and not rec.data.strip():
                yield None, rec.findings + [finding("D005", "blank line", path=shown, line=rec.line)]
                continue
            try:
                obj = json.loads(rec.data)
                found = rec.findings
            except (UnicodeDecodeError, json.JSONDecodeError):
                obj, found = ingest._decode(rec, shown)
                if obj is None:
                    yield None, found
                    continue
            gen, more = parse_generation(obj, path=shown, line=rec.line)
            yield gen, found + more


# ---------------------------------------------------------------------------------------------- dataset verdict
def parse_thresholds(specs: Iterable[str]) -> dict[str, float]:
    """``["A001=0.05", "A=0.01", "all=0"]`` -> {code: rate} for every A code (later specs win; exact codes win)."""
    out: dict[str, float] = {}
    exact: dict[str, float] = {}
    for spec in specs:
        for part in str(spec).split(","):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                raise ValueError(f"threshold {part!r}: expected CODE=RATE, e.g. A001=0.05")
            sel, val = part.split("=", 1)
            try:
                rate = float(val.rstrip("%")) / (100 if val.endswith("%") else 1)
            except ValueError:
                raise ValueError(f"threshold {part!r}: {val!r} is not a number") from None
            if not 0 <= rate <= 1:
                raise ValueError(f"threshold {part!r}: a rate is between 0 and 1 (or 0% and 100%)")
            codes = [c for c in A_CODES if matches(c, [sel])]
            if not codes:
                raise ValueError(f"threshold {part!r}: {sel!r} matches no A code")
            for c in codes:
                (exact if sel.strip().upper() == c else out)[c] = rate
    out.update(exact)
    return out


@dataclass
class ScanCounter:
    """Streams findings in; produces the per-code rates, verdict and a GateResult."""

    path: str
    thresholds: dict[str, float] = field(default_factory=dict)
    warn_only: bool = False
    generations: int = 0
    invalid_rows: int = 0
    rows: int = 0
    findings: list[Finding] = field(default_factory=list)
    by_code_rows: Counter = field(default_factory=Counter)
    groups: dict[str, Counter] = field(default_factory=dict)
    group_rows: Counter = field(default_factory=Counter)
    basis: Counter = field(default_factory=Counter)   # generations decided from ids / from text alone

    def add(self, gen: Generation | None, found: list[Finding], group: str | None = None,
            basis: str | None = None) -> None:
        if gen is None:
            if all(f.code in ("D003", "D004", "D005") for f in found):
                self.findings.extend(found)  # a blank line is not a row
                return
            self.invalid_rows += 1
        else:
            self.generations += 1
            if basis:
                self.basis[basis] += 1
        self.rows += 1
        codes = {f.code for f in found if f.code.startswith("A")}
        for c in codes:
            self.by_code_rows[c] += 1
        if group is not None and gen is not None:
            self.group_rows[group] += 1
            g = self.groups.setdefault(group, Counter())
            for c in codes:
                g[c] += 1
        self.findings.extend(found)

    def rate(self, code: str) -> float:
        denom = self.rows if code == "A010" else self.generations
        return self.by_code_rows[code] / denom if denom else 0.0

    def result(self) -> Any:
        from tmplcheck.validator.gate import GateResult

        rates = {c: round(self.rate(c), 6) for c in A_CODES}
        th = {c: self.thresholds.get(c, 0.0) for c in A_CODES}
        failed = [c for c in (*ARTIFACT_CODES, "A010") if self.by_code_rows[c] and rates[c] > th[c]]
        failed.sort()
        fs = []
        for f in self.findings:
            if f.code.startswith("A") and f.severity is Severity.ERROR and (self.warn_only or f.code not in failed):
                f = Finding(f.code, Severity.WARNING, f.message, f.path, f.line, f.pointer,
                            f.hint or ("within --threshold" if not self.warn_only else "--warn-only"), f.column,
                            f.data)
            fs.append(f)
        fs.sort(key=Finding.sort_key)
        if self.rows == 0:
            fs.append(finding("D023", "the generations file holds no rows", path=self.path))
        by_sev = Counter(f.severity.value for f in fs)
        by_code = Counter(f.code for f in fs)
        verdict = "pass" if by_sev.get("error", 0) == 0 else "fail"
        top = sorted((c for c in ARTIFACT_CODES if rates[c]), key=lambda c: -rates[c])[:3]
        head = (f"{self.generations} generations scanned; "
                + (", ".join(f"{c} {RULES[c].name} {rates[c]:.1%}" for c in top) if top else "no artifacts")
                + (f"; over threshold: {', '.join(failed)}" if failed else "")
                + (f"; {self.basis['text']} of {self.generations} judged from text alone (no output_ids or no "
                   "tokenizer: only this template's control-token strings count)"
                   if self.basis.get("text") and self.generations else ""))
        artifacts = {
            "generations": self.generations,
            "rows_invalid": self.invalid_rows,
            "rates": rates,
            "counts": {c: self.by_code_rows[c] for c in A_CODES},
            "thresholds": th,
            "over_threshold": failed,
            "any_artifact_rate": None,
            "verdict": verdict,
            "warn_only": self.warn_only,
            "basis": {"ids": self.basis.get("ids", 0), "text": self.basis.get("text", 0)},
            "headline": head,
        }
        if self.groups:
            artifacts["groups"] = {
                g: {"generations": self.group_rows[g],
                    "rates": {c: round(cnt[c] / self.group_rows[g], 6) if self.group_rows[g] else 0.0
                              for c in A_CODES},
                    "counts": {c: cnt[c] for c in A_CODES}}
                for g, cnt in self.groups.items()}
        lines_any = {f.line for f in self.findings if f.code in ARTIFACT_CODES}
        artifacts["any_artifact_rate"] = round(len(lines_any) / self.generations, 6) if self.generations else 0.0
        summary = {
            "path": self.path,
            "tmplcheck_version": __version__,
            "rows": self.rows,
            "rows_read": self.generations,
            "rows_unreadable": self.invalid_rows,
            "rows_with_errors": len({f.line for f in fs if f.severity is Severity.ERROR and f.line}),
            "errors": by_sev.get("error", 0),
            "warnings": by_sev.get("warning", 0),
            "infos": by_sev.get("info", 0),
            "by_code": dict(sorted(by_code.items())),
            "passed": verdict == "pass",
            "artifacts": artifacts,
        }
        return GateResult(self.path, fs, summary)


def scan_generations(gens: Iterable[tuple[Generation | None, list[Finding]]], pats: ArtifactPatterns, *,
                     path: str = "", thresholds: dict[str, float] | None = None, warn_only: bool = False,
                     group: Callable[[Generation], str] | None = None) -> Any:
    """Scan parsed generations (with the findings their parsing produced) into a GateResult."""
    counter = ScanCounter(path, thresholds or {}, warn_only)
    for gen, found in gens:
        if gen is not None:
            found = found + scan_generation(gen, pats)
        basis = None if gen is None else ("ids" if pats.special_ids and gen.output_ids is not None else "text")
        counter.add(gen, found, group(gen) if (group and gen is not None) else None, basis)
    return counter.result()


def scan_file(path: str | os.PathLike, pats: ArtifactPatterns, *, display_path: str | None = None,
              thresholds: dict[str, float] | None = None, warn_only: bool = False,
              group: Callable[[Generation], str] | None = None) -> Any:
    """Scan a generations file (JSONL or a .json list) into a GateResult with per-code rates in
    ``summary["artifacts"]``."""
    shown = display_path or str(path)
    return scan_generations(read_generations(path, display_path=shown), pats, path=shown, thresholds=thresholds,
                            warn_only=warn_only, group=group)


def scan_rows(rows: Iterable[dict], pats: ArtifactPatterns, *, path: str = "<generations>",
              thresholds: dict[str, float] | None = None, warn_only: bool = False,
              group: Callable[[Generation], str] | None = None) -> Any:
    """Scan in-memory rows (``{"prompt", "output", "output_ids"?, "finish_reason"?}``); ``line`` = 1-based index."""
    return scan_generations((parse_generation(r, path=path, line=i) for i, r in enumerate(rows, 1)), pats,
                            path=path, thresholds=thresholds, warn_only=warn_only, group=group)
