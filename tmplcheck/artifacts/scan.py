"""Scan generations for leaked template artifacts (A codes).

Each check is a small pure function ``(gen, pats) -> Iterator[Finding]`` that never raises on bad data; a
generation gets at most one finding per code (the first occurrence, with the count in ``data``). File reading
reuses the gate's line reader, so file-level defects are the same D findings the gate reports; rows of the wrong
shape are A010. ``scan_file`` / ``scan_rows`` return a ``GateResult`` so the gate's reporters print it.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tmplcheck import __version__
from tmplcheck.artifacts.patterns import ArtifactPatterns
from tmplcheck.validator.codes import RULES, matches
from tmplcheck.validator.findings import Finding, Severity, finding

A_CODES = tuple(c for c in RULES if c.startswith("A"))
ARTIFACT_CODES = tuple(c for c in A_CODES if c != "A010")
SNIPPET = 24
_CTRL = re.compile(r"[\x00-\x1f]")


@dataclass
class Generation:
    """One generation row: the prompt it answered, the output text, and optionally ids and finish reason."""

    line: int
    output: str
    prompt: str | list[dict] | None = None
    output_ids: list[int] | None = None
    finish_reason: str | None = None
    path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def system(self) -> str | None:
        if isinstance(self.prompt, list):
            for m in self.prompt:
                if isinstance(m, dict) and m.get("role") == "system" and isinstance(m.get("content"), str):
                    return m["content"]
        return None


def _snip(text: str, start: int, end: int) -> str:
    a, b = max(0, start - SNIPPET), min(len(text), end + SNIPPET)
    s = ("…" if a else "") + text[a:b] + ("…" if b < len(text) else "")
    return s.encode("unicode_escape").decode("ascii") if _CTRL.search(s) else s


def _at(gen: Generation, code: str, msg: str, start: int, end: int, count: int = 1, *, view: str = "output",
        pointer: str = "/output", **data: Any) -> Finding:
    d = {"start": start, "end": end, "count": count, "view": view, **data}
    return finding(code, msg, path=gen.path, line=gen.line, pointer=pointer, data=d)


# ------------------------------------------------------------------------------------------------------- checks
class _View:
    """The output with control tokens removed, and the map back to the original offsets."""

    __slots__ = ("text", "s", "o", "pats")

    def __init__(self, gen: Generation, pats: ArtifactPatterns):
        self.pats = pats
        self.text, self.s, self.o = pats.strip_controls(gen.output)

    def orig(self, i: int) -> int:
        return i if len(self.s) == 1 else ArtifactPatterns.to_original(i, self.s, self.o)

    def span(self, a: int, b: int) -> tuple[int, int]:
        """A [a, b) span of the stripped text in original offsets (the end stays before any removed token)."""
        return self.orig(a), (self.orig(b - 1) + 1 if b > a else self.orig(a))


def check_role_words(gen: Generation, pats: ArtifactPatterns, view: _View) -> Iterator[Finding]:
    """A001 trailing role word (glued to the text before it, or alone on its line); A002 leading role word."""
    text = view.text
    first = len(text) - len(text.lstrip())
    lead = pats.role_start_re.match(text) if pats.role_start_re else None
    if lead:
        a, b = view.span(lead.start(1), lead.end(1))
        yield _at(gen, "A002", f"output starts with the role word {lead.group(1)!r}: "
                               f"{_snip(gen.output, a, b)}", a, b, word=lead.group(1))
    if pats.role_end_re is None:
        return
    hits = []
    for m in pats.role_end_re.finditer(text):
        i = m.start()
        if i == first:
            continue  # the output's first word: leading, not trailing
        prev = text[i - 1] if i else "\n"
        if prev in " \t":
            line_start = text.rfind("\n", 0, i) + 1
            if text[line_start:i].strip():
                continue  # "... talk to the user": a word in a sentence
        elif prev != "\n" and prev.islower():
            continue  # "subsystem"
        hits.append(m)
    if hits:
        m = hits[0]
        a, b = view.span(m.start(), m.end())
        words = sorted({h.group() for h in hits})
        yield _at(gen, "A001", f"role word {m.group()!r} ends a line ({len(hits)}x: {', '.join(words)}): "
                               f"{_snip(gen.output, a, b)}", a, b, len(hits), word=m.group())


def check_control_tokens(gen: Generation, pats: ArtifactPatterns) -> Iterator[Finding]:
    """A003 literal control-token strings (not the final end-of-turn, not BOS); A007 BOS strings."""
    if pats.control_re is None:
        return
    text = gen.output
    tail = text.rstrip()
    ctl, bos = [], []
    for m in pats.control_re.finditer(text):
        t = m.group()
        if pats.bos_token and t == pats.bos_token:
            bos.append(m)
        elif m.end() == len(tail) and t in pats.stop_strings:
            continue  # the turn's own end-of-turn, kept in the text
        else:
            ctl.append(m)
    if ctl:
        m = ctl[0]
        toks = sorted({x.group() for x in ctl})
        yield _at(gen, "A003", f"control token {m.group()!r} in the text ({len(ctl)}x: {', '.join(toks)}): "
                               f"{_snip(text, m.start(), m.end())}", m.start(), m.end(), len(ctl), tokens=toks)
    if bos:
        m = bos[0]
        yield _at(gen, "A007", f"BOS {m.group()!r} inside the output ({len(bos)}x): {_snip(text, m.start(), m.end())}",
                  m.start(), m.end(), len(bos))
    elif pats.bos_id is not None and gen.output_ids and pats.bos_id in gen.output_ids:
        n = gen.output_ids.count(pats.bos_id)
        k = gen.output_ids.index(pats.bos_id)
        yield finding("A007", f"BOS id {pats.bos_id} at output_ids[{k}] ({n}x)", path=gen.path, line=gen.line,
                      pointer=f"/output_ids/{k}", data={"count": n, "view": "ids", "index": k})


def check_headers(gen: Generation, pats: ArtifactPatterns, view: _View) -> Iterator[Finding]:
    """A004 headers of other known templates and mangled control-token names; A009 the generation prompt again."""
    text = gen.output
    hits: list[tuple[int, int, str]] = []
    if pats.foreign_re is not None:
        hits += [(m.start(), m.end(), m.group()) for m in pats.foreign_re.finditer(text)]
    if pats.foreign_plain_re is not None:
        hits += [(m.start(), m.end(), m.group().strip()) for m in pats.foreign_plain_re.finditer(text)]
    if pats.names_re is not None:
        for m in pats.names_re.finditer(view.text):
            a, b = view.span(m.start(), m.end())
            hits.append((a, b, m.group()))
    if hits:
        hits.sort()
        a, b, s = hits[0]
        what = sorted({h[2] for h in hits})
        yield _at(gen, "A004", f"header fragment {s!r} of a known template ({len(hits)}x): {_snip(text, a, b)}",
                  a, b, len(hits), fragments=what)
    if pats.gen_prompt_re is not None:
        found = list(pats.gen_prompt_re.finditer(text))
        if found:
            m = found[0]
            yield _at(gen, "A009", f"the generation prompt {pats.generation_prompt!r} appears in the output "
                                   f"({len(found)}x): {_snip(text, m.start(), m.end())}", m.start(), m.end(),
                      len(found))


def check_continuation(gen: Generation, pats: ArtifactPatterns, view: _View) -> Iterator[Finding]:
    """A005: the model writes the next non-assistant turn (rendered header, or its stripped form plus text)."""
    best: tuple[int, int, str, str] | None = None
    for role, _rendered, rre, sre in pats.continuation:
        if rre is not None:
            m = rre.search(gen.output)
            if m and (best is None or m.start() < best[0]):
                best = (m.start(), m.end(), role, "rendered")
        if sre is not None:
            for m in sre.finditer(view.text):
                a, b = view.span(m.start(1), m.end(1))
                if best is None or a < best[0]:
                    best = (a, b, role, "stripped")
                break
    if best:
        a, b, role, how = best
        yield _at(gen, "A005", f"the model writes a {role} turn ({how} header): {_snip(gen.output, a, b)}", a, b,
                  role=role, form=how)


def check_runaway(gen: Generation, pats: ArtifactPatterns) -> Iterator[Finding]:
    """A006: finish_reason length, or output_ids without any stop id (and no finish_reason stop)."""
    if gen.finish_reason == "length":
        n = len(gen.output_ids) if gen.output_ids is not None else None
        yield finding("A006", "generation stopped at the token limit (finish_reason length)"
                      + (f" after {n} tokens" if n is not None else ""), path=gen.path, line=gen.line,
                      pointer="/finish_reason", data={"view": "meta"})
    elif gen.finish_reason is None and gen.output_ids is not None and pats.stop_ids \
            and not pats.stop_ids.intersection(gen.output_ids):
        yield finding("A006", f"none of the stop ids {sorted(pats.stop_ids)} in the {len(gen.output_ids)} "
                              "output_ids: the generation never ended its turn", path=gen.path, line=gen.line,
                      pointer="/output_ids", data={"view": "ids"})


def check_system_echo(gen: Generation, pats: ArtifactPatterns) -> Iterator[Finding]:
    """A008: the prompt's system message (or its first 48 characters) inside the output."""
    sysmsg = (gen.system or "").strip()
    if len(sysmsg) < 8:
        return
    needle = sysmsg if len(sysmsg) <= 48 else sysmsg[:48]
    i = gen.output.find(needle)
    if i >= 0:
        n = gen.output.count(needle)
        yield _at(gen, "A008", f"the system prompt is echoed ({n}x): {_snip(gen.output, i, i + len(needle))}",
                  i, i + len(needle), n)


def scan_generation(gen: Generation, pats: ArtifactPatterns) -> list[Finding]:
    """Every A finding for one generation (at most one per code)."""
    view = _View(gen, pats)
    out: list[Finding] = []
    out += check_role_words(gen, pats, view)
    out += check_control_tokens(gen, pats)
    out += check_headers(gen, pats, view)
    out += check_continuation(gen, pats, view)
    out += check_runaway(gen, pats)
    out += check_system_echo(gen, pats)
    return out


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
                if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                    invalid(f"prompt message {i} is not a {{'role': str, 'content': str}} object", f"/prompt/{i}")
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

    def add(self, gen: Generation | None, found: list[Finding], group: str | None = None) -> None:
        if gen is None:
            if all(f.code in ("D003", "D004", "D005") for f in found):
                self.findings.extend(found)  # a blank line is not a row
                return
            self.invalid_rows += 1
        else:
            self.generations += 1
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
        failed = [c for c in A_CODES if self.by_code_rows[c] and rates[c] > th[c]]
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
                + (f"; over threshold: {', '.join(failed)}" if failed else ""))
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
        counter.add(gen, found, group(gen) if (group and gen is not None) else None)
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
