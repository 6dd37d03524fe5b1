"""``tmplcheck report RUN_DIR --generations FILE`` writes report.json and a self-contained report.html; the HTML is
opened in a real headless browser (Debian package ``chromium``) and its numbers compared with report.json.

The generations here are the fixture generations (the end-to-end test generates with a trained model)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GEN = ROOT / "fixtures" / "generations"


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        p = shutil.which(name)
        if p:
            return p
    return None


needs_browser = pytest.mark.skipif(chromium() is None, reason="no headless browser: apt-get install -y chromium")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("run")
    (d / "run.json").write_text(json.dumps({"template": {"name": "llama-3"}, "mode": "full", "packing": True,
                                            "forced": False, "stop_ids": [128009, 128001], "seed": 0}))
    (d / "metrics.json").write_text(json.dumps({"loss": [{"step": s, "loss": 12.0 / (1 + s / 10)} for s in range(1, 41)],
                                                "tokens_per_s": 1234.5, "train_tokens": 40960}))
    (d / "approval.json").write_text(json.dumps({"format": 1, "data": "train.jsonl", "template": {"name": "llama-3"},
                                                 "summary": {"rows": 400, "errors": 0, "warnings": 0, "passed": True}}))
    rows = []
    for f in sorted(GEN.glob("*.jsonl")):
        if f.name == "invalid_rows.jsonl":
            continue
        for i, line in enumerate(f.read_text().splitlines()):
            r = json.loads(line)
            r["mode"] = "greedy" if i % 2 == 0 else "sampled"
            r["eval_line"] = i + 1
            rows.append(r)
    (d / "gens.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


@pytest.fixture(scope="module")
def report(run_dir):
    p = subprocess.run([sys.executable, "-m", "tmplcheck", "report", str(run_dir), "--generations",
                        str(run_dir / "gens.jsonl")], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "FAIL" in p.stdout and "report.html" in p.stdout
    data = json.loads((run_dir / "report" / "report.json").read_text())
    return data, (run_dir / "report" / "report.html")


def test_report_json(report):
    data, _ = report
    scan = data["scan"]
    assert set(scan["groups"]) == {"greedy/kept", "sampled/kept"}
    assert data["verdict"] == "fail" and data["exit_code"] == 1
    assert scan["rates"]["A001"] > 0 and scan["rates"]["A010"] == 0
    total = sum(g["generations"] for g in scan["groups"].values())
    assert total == scan["generations"]
    for code in scan["rates"]:
        assert scan["counts"][code] == sum(g["counts"][code] for g in scan["groups"].values())
    ex = {e["code"] for e in data["examples"]}
    assert {"A001", "A003", "A005", "A006", "A007", "A008", "A009"} <= ex
    assert data["gate"]["passed"] is True and data["metrics"]["loss"]


def test_html_is_self_contained(report):
    _, html = report
    text = html.read_text()
    for pat in (r"<script", r"<link", r"\bsrc=", r"@import", r"url\(", r"https?://(?!www\.w3\.org/2000/svg)"):
        assert not re.search(pat, text), pat


class _Dom(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack: list[dict] = []
        self.cells: list[dict] = []
        self.ids: dict[str, dict] = {}
        self.marks = 0
        self.ctl = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        node = {"tag": tag, "attrs": a, "text": ""}
        if tag not in ("br", "meta", "line", "polyline"):
            self.stack.append(node)
        if "id" in a:
            self.ids[a["id"]] = node
        if "data-rate" in a and tag == "td":
            self.cells.append(node)
        self.marks += tag == "mark"
        self.ctl += "ctl" in a.get("class", "").split()

    def handle_endtag(self, tag):
        while self.stack:
            n = self.stack.pop()
            if n["tag"] == tag:
                break

    def handle_data(self, data):
        for n in self.stack:
            n["text"] += data


@needs_browser
def test_html_renders_in_chromium_and_matches_json(report, tmp_path):
    data, html = report
    exe = chromium()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([exe, *flags, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and "</html>" in dom.stdout, dom.stderr[-2000:]
    shot = tmp_path / "report.png"
    p = subprocess.run([exe, *flags, "--window-size=1200,2400", f"--screenshot={shot}", html.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and shot.is_file(), p.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000  # a rendered page, not a blank one

    d = _Dom()
    d.feed(dom.stdout)
    scan = data["scan"]
    seen = set()
    for cell in d.cells:
        code, group = cell["attrs"]["data-code"], cell["attrs"]["data-group"]
        want = scan["rates"][code] if group == "overall" else scan["groups"][group]["rates"][code]
        assert float(cell["attrs"]["data-rate"]) == want
        assert cell["text"].strip() == f"{want * 100:.1f}%"
        seen.add((code, group))
    assert len(seen) == len(scan["rates"]) * (len(scan["groups"]) + 1)
    assert d.ids["verdict"]["attrs"]["data-verdict"] == data["verdict"]
    assert d.ids["verdict"]["text"].strip() == data["verdict"].upper()
    assert int(d.ids["n-generations"]["text"]) == scan["generations"]
    assert float(d.ids["any-rate"]["attrs"]["data-rate"]) == scan["any_artifact_rate"]
    assert d.ids["headline"]["text"].strip() == scan["headline"]
    curve = d.ids["loss-curve"]["attrs"]
    assert int(curve["data-points"]) == len(data["metrics"]["loss"])
    assert float(curve["data-last"]) == data["metrics"]["loss"][-1]["loss"]
    assert d.marks >= len(data["examples"]) and d.ctl > 0  # artifacts highlighted, control tokens visible
    assert "passed" in d.ids["gate"]["text"] and "train.jsonl" in d.ids["approval"]["text"]


def test_report_decides_on_the_runs_ids(tmp_path):
    """With the run's tokenizer saved, the report judges control tokens on the generations' ids: literal text that
    looks like a token is text; a real special id is a control token, even where the text hides it."""
    from tmplcheck import assets
    from tmplcheck.artifacts.report import build_report
    from tmplcheck.validator.tokenizer import load_tokenizer

    run = tmp_path / "run"
    (run / "tokenizer").mkdir(parents=True)
    src = assets.builtin_tokenizer_dir("llama-3")
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (src / f).is_file():
            shutil.copy(src / f, run / "tokenizer" / f)
    (run / "run.json").write_text(json.dumps({"template": {"name": "llama-3"}, "stop_ids": [128009, 128001]}))
    tok = load_tokenizer("llama-3")
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    prompt = [{"role": "user", "content": "Hi"}]
    literal = enc("The string <|") + enc("eot_id|> is text here.") + [128009]
    real = enc("Hi!") + [128009] + enc("<|start_header_id|>user<|end_header_id|>\n\nmore")
    rows = [
        {"prompt": prompt, "output": tok.decode(ids), "output_skipped": tok.decode(ids, skip_special_tokens=True),
         "output_ids": ids, "finish_reason": "stop", "mode": "greedy", "eval_line": k}
        for k, ids in ((1, literal), (2, real))
    ]
    gens = tmp_path / "gens.jsonl"
    gens.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rep = build_report(run, generations_file=gens)
    by_line: dict[int, set[str]] = {}
    for f in rep.result.findings:
        by_line.setdefault(f.line, set()).add(f.code)
    assert 1 not in by_line and 2 not in by_line            # the literal look-alike, kept and skipped
    assert {"A003", "A005"} <= by_line[3] and {"A003", "A005"} <= by_line[4]   # real ids, kept and skipped
    assert rep.data["scan"]["basis"] == {"ids": 4, "text": 0}
    assert 'id="basis" data-ids="4" data-text="0"' in rep.html_path.read_text()
