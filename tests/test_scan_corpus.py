"""The labelled scan corpus (fixtures/scan_corpus/): every case asserted, and the issue's targets per family.

A leaked case must get every code it is labelled with (and is flagged); a clean case must get no error A finding
(infos such as A013 are allowed). Cases the scanner gets wrong stay in the corpus and are listed here as known
misses (strict xfail: fixing one makes the test fail until it is taken off the list).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("scan_accuracy", ROOT / "bench" / "scan_accuracy.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

CASES = bench.load_corpus()
FAMILIES = ("llama-3", "chatml", "mistral", "gemma", "phi-3", "zephyr", "vicuna", "alpaca")

#: built-ins added with issue 11's item 7 (tool and reasoning formats) that have no labelled cases yet: their cases
#: (reasoning markup, channel headers, tool-call markers) come with the scan work of item 8
NO_CASES_YET = {"llama-3.2", "qwen3", "mistral-small-3.2", "mistral-nemo", "gemma-3", "deepseek-r1", "gpt-oss"}

# id -> why the scanner gets it wrong
KNOWN_WRONG = {
    "chatml/TL02": "leaked, labelled A004: Qwen's '<|endoftext|>' is a special token of the qwen2 tokenizer, so it "
                   "is reported as A003 (a control token of this tokenizer), not as another family's fragment",
}


@pytest.fixture(scope="module")
def scanned() -> dict[str, dict]:
    return {c["id"]: c for c in bench.scan_cases(CASES)}


def test_corpus_covers_every_builtin_template_and_family():
    from tmplcheck.templates import registry

    assert set(FAMILIES) == {c["family"] for c in CASES}
    assert {c["template"] for c in CASES} == set(registry()) - NO_CASES_YET
    for fam in FAMILIES:
        rows = [c for c in CASES if c["family"] == fam]
        assert sum(c["label"] == "leaked" for c in rows) >= 20, fam
        assert sum(c["label"] == "clean" for c in rows) >= 20, fam
    assert len({c["id"] for c in CASES}) == len(CASES)
    assert all(c["codes"] for c in CASES if c["label"] == "leaked")
    assert not any(c["codes"] for c in CASES if c["label"] == "clean")


@pytest.mark.parametrize("cid", [c["id"] for c in CASES])
def test_case(cid, scanned, request):
    if cid in KNOWN_WRONG:
        request.applymarker(pytest.mark.xfail(reason=KNOWN_WRONG[cid], strict=True))
    c = scanned[cid]
    if c["label"] == "leaked":
        assert set(c["codes"]) <= set(c["got"]), (c["output"], c["messages"])
    else:
        assert c["got"] == [], (c["output"], c["messages"])


def test_targets_per_family(scanned):
    s = bench.score(list(scanned.values()))
    for fam in FAMILIES:
        f = s["families"][fam]
        assert f["recall"] >= bench.RECALL_TARGET, (fam, s["misses"])
        assert f["false_alarm_rate"] <= bench.FALSE_ALARM_TARGET, (fam, s["false_alarms"])
    assert s["false_alarms"] == []


def test_ids_decide_over_text(scanned):
    """The same output text, judged on its ids: a look-alike is text, a real special id is a control token even in
    backticks."""
    lit = scanned["llama-3/C17"]   # "the string <|eot_id|> appears inside a message", written as plain pieces
    assert lit["output_ids"] and lit["got"] == []
    real = scanned["llama-3/HL05"]  # "The token `<|eot_id|>` ends the turn." with the real id
    assert "A003" in real["got"]
    skipped = scanned["phi-3/L20"]  # continuation decoded with special tokens skipped: only the ids show it
    assert "<|user|>" not in skipped["output"] and "A005" in skipped["got"]


def test_role_words_decided_on_ids(scanned):
    """With ids a role word ending a line or the answer is a stripped header only where the ids hold that header
    around its tokens: an identifier (request.user, ctx.user) is text, a real header after one is a leak."""
    text_only, with_ids = scanned["llama-3/TC10"], scanned["llama-3/IC05"]
    assert text_only["output"] == with_ids["output"] and with_ids["output_ids"]
    assert text_only["got"] == [] and with_ids["got"] == []
    # from text alone the attribute is an info (A013), a leak only where the template's header tail follows it
    assert "A013" in text_only["infos"] and "A013" not in with_ids["infos"]
    for cid in ("llama-3/IC10", "chatml/IC03", "gemma/IC01"):
        assert "output_ids" not in scanned[cid] and scanned[cid]["got"] == [], cid
    for cid in ("llama-3/IL09", "chatml/IL04", "gemma/IL02"):
        assert "output_ids" not in scanned[cid] and "A001" in scanned[cid]["got"], cid
    for cid in ("llama-3/IC06", "llama-3/IC07", "llama-3/IC08", "chatml/IC02"):
        assert scanned[cid]["output_ids"] and scanned[cid]["got"] == [], cid
    for cid in ("llama-3/IL01", "llama-3/IL02", "llama-3/IL03", "llama-3/IL04", "chatml/IL01", "llama-3/L26"):
        c = scanned[cid]
        assert c["output_ids"] and c.get("view") == "skipped" and "A001" in c["got"], cid
