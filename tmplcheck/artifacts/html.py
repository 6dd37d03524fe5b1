"""report.html: one self-contained page (inline CSS and SVG, no scripts, no network assets).

Every number on the page is printed from the report.json data it is given; rate cells carry ``data-code``,
``data-group`` and ``data-rate`` so a test can compare the rendered page with the JSON.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1100px;color:#1b1f24;
padding:0 16px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de}
.verdict{display:inline-block;padding:2px 10px;border-radius:4px;font-weight:700;color:#fff}
.pass{background:#1a7f37} .fail{background:#cf222e} .warn{color:#9a6700}
table{border-collapse:collapse;margin:6px 0} td,th{border:1px solid #d0d7de;padding:3px 8px;text-align:left}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums} td.over{background:#ffebe9;font-weight:700}
pre.gen{white-space:pre-wrap;word-break:break-all;background:#f6f8fa;border:1px solid #d0d7de;padding:8px;
font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace}
.ctl{background:#ddf4ff;color:#0550ae;border-radius:3px;padding:0 2px} .nl{color:#8c959f}
mark{background:#fff8c5;outline:2px solid #d4a72c} mark .ctl{background:#fbefa4}
.meta{color:#57606a} dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px} dt{font-weight:600}
svg text{font:11px system-ui,sans-serif;fill:#57606a}
"""


def pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def _show(text: str) -> str:
    """Escape text; make line breaks and tabs visible."""
    return escape(text).replace("\t", '<span class="nl">⇥</span>\t').replace("\n", '<span class="nl">↵</span>\n')


def render_segments(segs: list[dict]) -> str:
    parts = []
    for s in segs:
        inner = f'<span class="ctl">{escape(s["text"])}</span>' if s["ctl"] else _show(s["text"])
        parts.append(f"<mark>{inner}</mark>" if s["mark"] else inner)
    return "".join(parts)


def loss_svg(points: list[dict], width: int = 640, height: int = 220) -> str:
    """The training loss as an inline SVG line plot with axes; ``points`` = [{"step", "loss"}]."""
    pts = [(float(p["step"]), float(p["loss"])) for p in points
           if isinstance(p, dict) and isinstance(p.get("step"), (int, float)) and isinstance(p.get("loss"), (int, float))]
    if not pts:
        return '<p class="meta" id="loss-none">No loss values in metrics.json.</p>'
    l, r, t, b = 52, 12, 10, 28
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

    def sx(x: float) -> float:
        return l + (x - x0) / (x1 - x0) * (width - l - r)

    def sy(y: float) -> float:
        return t + (y1 - y) / (y1 - y0) * (height - t - b)

    path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
    ticks = []
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        ticks.append(f'<line x1="{l}" x2="{width - r}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#eaeef2"/>'
                     f'<text x="{l - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.3g}</text>')
        x = x0 + (x1 - x0) * i / 4
        ticks.append(f'<text x="{sx(x):.1f}" y="{height - 8}" text-anchor="middle">{x:.0f}</text>')
    return (f'<svg id="loss-curve" data-points="{len(pts)}" data-first="{ys[0]}" data-last="{ys[-1]}" '
            f'xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="training loss by step">'
            + "".join(ticks)
            + f'<line x1="{l}" y1="{height - b}" x2="{width - r}" y2="{height - b}" stroke="#8c959f"/>'
            f'<line x1="{l}" y1="{t}" x2="{l}" y2="{height - b}" stroke="#8c959f"/>'
            f'<polyline fill="none" stroke="#0969da" stroke-width="1.8" points="{path}"/>'
            f'<text x="{(width + l) / 2:.0f}" y="{height}" text-anchor="middle">step</text></svg>'
            f'<p class="meta">loss {ys[0]:.4g} → {ys[-1]:.4g} over {len(pts)} logged steps</p>')


def _kv(d: dict | None, keys: list[str] | None = None) -> str:
    if not d:
        return ""
    items = [(k, d[k]) for k in (keys or list(d)) if k in d]
    rows = []
    for k, v in items:
        if isinstance(v, (dict, list)):
            v = json.dumps(v, ensure_ascii=False)
            if len(v) > 300:
                v = v[:299] + "…"
        rows.append(f"<dt>{escape(str(k))}</dt><dd>{escape(str(v))}</dd>")
    return "<dl>" + "".join(rows) + "</dl>"


def render_html(data: dict[str, Any]) -> str:
    scan = data["scan"]
    groups = sorted(scan.get("groups", {}))
    verdict = data.get("verdict") or scan["verdict"]   # the scan's, or fail when the stop-id check failed
    run = data.get("run") or {}
    tmpl = run.get("template") if isinstance(run.get("template"), dict) else {"name": run.get("template")}
    h: list[str] = []
    h.append(f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>tmplcheck report</title>'
             f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head><body>')
    h.append(f'<h1>Template artifact report <span id="verdict" class="verdict {verdict}" data-verdict="{verdict}">'
             f'{verdict.upper()}</span></h1>')
    h.append(f'<p class="meta">{escape(str(data.get("run_dir", "")))} · template '
             f'<b id="template-name">{escape(str((tmpl or {}).get("name")))}</b> · tmplcheck '
             f'{escape(str(data.get("tmplcheck_version")))} · {escape(str(data.get("created", "")))}</p>')
    h.append(f'<p id="headline">{escape(scan["headline"])}</p>')
    gen = data.get("generation") or {}
    h.append(f'<p class="meta">Generations: <span id="n-generations">{scan["generations"]}</span> scanned texts '
             f'from {gen.get("generations", "?")} generations on {gen.get("prompts", "?")} held-out prompts '
             f'(greedy + {gen.get("samples", 0)} sampled each, at most {gen.get("max_new_tokens")} new tokens, '
             f'stop ids {escape(str(gen.get("stop_ids")))}); each is scanned with special tokens kept and skipped.</p>')
    basis = scan.get("basis") or {}
    if basis:
        h.append(f'<p class="meta" id="basis" data-ids="{basis.get("ids", 0)}" data-text="{basis.get("text", 0)}">'
                 f'Judged on their token ids: {basis.get("ids", 0)}; from text alone: {basis.get("text", 0)} (only '
                 "the template's control-token strings count there; the run's tokenizer could not be used).</p>"
                 if basis.get("text") else
                 f'<p class="meta" id="basis" data-ids="{basis.get("ids", 0)}" data-text="0">Every scanned text '
                 "was judged on its token ids: a control token is a special id, never a look-alike string.</p>")

    stop = data.get("stop_check")
    if stop:
        cls = "pass" if stop["passed"] else "fail"
        h.append(f'<p id="stop-check" data-passed="{str(bool(stop["passed"])).lower()}">Stop ids: '
                 f'<span class="verdict {cls}">{"OK" if stop["passed"] else "MISSING"}</span> '
                 f'{escape(stop.get("message", ""))}</p>')
    h.append("<h2>Artifact rates</h2><table id=\"rates\"><thead><tr><th>code</th><th>artifact</th>")
    h.extend(f'<th class="num">{escape(g)}</th>' for g in groups)
    h.append('<th class="num">overall</th><th class="num">count</th><th class="num">threshold</th></tr></thead><tbody>')
    codes = data.get("codes") or {}
    for c, rate in scan["rates"].items():
        over = c in scan["over_threshold"]
        name = (codes.get(c) or {}).get("name", "")
        summ = (codes.get(c) or {}).get("summary", "")
        h.append(f'<tr data-code="{c}"><td>{c}</td><td title="{escape(summ)}">{escape(name)}</td>')
        for g in groups:
            gr = scan["groups"][g]["rates"][c]
            h.append(f'<td class="num rate" data-code="{c}" data-group="{escape(g)}" data-rate="{gr!r}">{pct(gr)}</td>')
        h.append(f'<td class="num rate{" over" if over else ""}" data-code="{c}" data-group="overall" '
                 f'data-rate="{rate!r}">{pct(rate)}</td><td class="num count" data-code="{c}">{scan["counts"][c]}</td>'
                 f'<td class="num">{pct(scan["thresholds"][c])}</td></tr>')
    h.append("</tbody></table>")
    h.append(f'<p class="meta">Any artifact: <b id="any-rate" data-rate="{scan["any_artifact_rate"]!r}">'
             f'{pct(scan["any_artifact_rate"])}</b> of scanned texts. Over threshold: '
             f'{escape(", ".join(scan["over_threshold"]) or "none")}.</p>')

    engines = data.get("engines") or {}
    if len(engines) > 1:
        h.append(_side_by_side(engines, data.get("codes") or {}))
    h.append("<h2>Examples</h2>")
    exs = data.get("examples") or []
    if not exs:
        h.append('<p id="no-examples">No artifacts found.</p>')
    for i, ex in enumerate(exs):
        h.append(f'<div class="example" data-code="{ex["code"]}" id="example-{i}"><p><b>{ex["code"]} '
                 f'{escape(ex["name"])}</b> <span class="meta">· {escape(str(ex["mode"]))} · special tokens '
                 f'{escape(str(ex["view"]))} · eval row {escape(str(ex.get("eval_line")))} · finish '
                 f'{escape(str(ex.get("finish_reason")))}</span><br><span class="meta">{escape(ex["message"])}</span>'
                 f'</p><pre class="gen">{render_segments(ex["segments"])}</pre></div>')

    h.append("<h2>Training loss</h2>")
    h.append(loss_svg((data.get("metrics") or {}).get("loss") or []))
    m = data.get("metrics") or {}
    h.append(_kv({k: m[k] for k in ("tokens_per_s", "train_tokens", "peak_memory_bytes") if m.get(k) is not None}))

    h.append("<h2>Approval stamp</h2>")
    if data.get("approval"):
        h.append(f'<div id="approval">{_kv(data["approval"])}</div>')
    else:
        h.append('<p id="approval" class="warn"><b>No approval stamp.</b> This run was trained with --force on data '
                 'the gate did not approve.</p>' if data.get("forced") else
                 '<p id="approval" class="warn">No approval stamp in the run directory.</p>')
    h.append("<h2>Gate summary</h2>")
    gate = data.get("gate")
    h.append(f'<div id="gate">{_kv(gate)}</div>' if gate else '<p id="gate" class="meta">No gate summary recorded.</p>')
    h.append("<h2>Run</h2>")
    h.append(_kv(run))
    h.append("</body></html>\n")
    return "".join(h)


def _side_by_side(engines: dict[str, dict], codes: dict[str, dict]) -> str:
    """The engines' artifact rates next to each other, then their greedy outputs per held-out prompt."""
    names = list(engines)
    h = ['<h2 id="engines">transformers and llama.cpp side by side</h2><p class="meta">'
         + " · ".join(f'{escape(engines[n]["label"])}: {engines[n]["generations"]} generations ('
                      f'{escape(engines[n]["generations_file"])}'
                      + (f', chat format {escape(str(engines[n]["chat_format"]))}' if engines[n].get("chat_format")
                         else "") + ")" for n in names) + "</p>"]
    h.append('<table id="engine-rates"><thead><tr><th>code</th><th>artifact</th>')
    for n in names:
        h.append(f'<th class="num">{escape(n)} greedy/skipped</th><th class="num">{escape(n)} overall</th>')
    h.append("</tr></thead><tbody>")
    for c in next(iter(engines.values()))["scan"]["rates"]:
        h.append(f'<tr data-code="{c}"><td>{c}</td><td>{escape((codes.get(c) or {}).get("name", ""))}</td>')
        for n in names:
            sc = engines[n]["scan"]
            g = sc.get("groups", {}).get("greedy/skipped", {}).get("rates", {}).get(c, 0.0)
            over = c in sc["over_threshold"]
            h.append(f'<td class="num rate" data-engine="{n}" data-code="{c}" data-group="greedy/skipped" '
                     f'data-rate="{g!r}">{pct(g)}</td><td class="num rate{" over" if over else ""}" data-engine="{n}" '
                     f'data-code="{c}" data-group="overall" data-rate="{sc["rates"][c]!r}">{pct(sc["rates"][c])}</td>')
        h.append("</tr>")
    h.append('<tr><td colspan="2">any artifact</td>' + "".join(
        f'<td></td><td class="num" data-engine="{n}" data-any="{engines[n]["scan"]["any_artifact_rate"]!r}">'
        f'{pct(engines[n]["scan"]["any_artifact_rate"])}</td>' for n in names) + "</tr></tbody></table>")
    by_line: dict[Any, dict[str, dict]] = {}
    for n in names:
        for r in engines[n].get("side_by_side") or []:
            by_line.setdefault(r.get("eval_line"), {})[n] = r
    h.append('<table id="engine-outputs"><thead><tr><th>eval row</th>'
             + "".join(f"<th>{escape(n)} (greedy, as shown: special tokens skipped)</th>" for n in names)
             + "</tr></thead><tbody>")
    for line, per in list(by_line.items())[:12]:
        h.append(f'<tr data-eval-line="{escape(str(line))}"><td>{escape(str(line))}</td>')
        for n in names:
            r = per.get(n)
            h.append("<td>" + (f'<pre class="gen">{_show(r.get("output_skipped") or "")}</pre><span class="meta">'
                               f'finish {escape(str(r.get("finish_reason")))}</span>' if r else "") + "</td>")
        h.append("</tr>")
    h.append("</tbody></table>")
    return "".join(h)
