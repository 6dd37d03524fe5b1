"""Every code `tmplcheck rule` lists is reachable: fixtures/manifest.toml names, for each, a fixture that triggers
exactly that code through the real command line (within its family, see the manifest's header) and a clean
counterpart that triggers nothing. A new code is one line in the manifest."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import derived_tokenizers
import pytest
from click.testing import CliRunner

from tmplcheck.cli import cli
from tmplcheck.validator.codes import RULES

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"
MANIFEST = tomllib.loads((FIX / "manifest.toml").read_text(encoding="utf-8"))["codes"]
FIELDS = {"data", "template", "tokenizer", "args", "scope", "also", "ignore", "command", "xfail", "clean",
          "clean_template", "clean_tokenizer"}
#: the clean counterpart of each family: (data, template, tokenizer)
CLEAN = {"D": ("dataset/clean.jsonl", None, None), "T": ("templates/rows.jsonl", "llama-3", None),
         "X": ("dataset/clean.jsonl", "chatml", None), "K": ("tokens/clean.jsonl", "llama-3", "llama-3"),
         "M": ("tokens/clean.jsonl", "llama-3", "llama-3"), "A": ("generations/clean.jsonl", "llama-3", "llama-3"),
         "L": ("audit/clean.jsonl", "llama-3", "llama-3"), "G": ("serving/clean.gguf", "llama-3", "llama-3")}


# ----------------------------------------------------------------------------------------- derived tokenizers
def _llama2_hf_gguf(d: Path) -> None:
    """Llama 2's vocabulary as transformers' GGUF loader converts it, next to the GGUF it came from (K010)."""
    from transformers import AutoTokenizer

    from tmplcheck import assets

    gguf = assets.vocab_gguf("llama-spm")
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(d))
    (d / "tmplcheck-tokenizer.json").write_text(json.dumps({"source": str(gguf)}))


DERIVED = {"llama3-base": derived_tokenizers.llama3_base, "llama3-no-bos": derived_tokenizers.llama3_no_bos, "llama2-hf-gguf": _llama2_hf_gguf}


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    made: dict[str, str] = {}

    def resolve(value: str | None) -> str | None:
        if value is None:
            return None
        if value.startswith("@"):
            name = value[1:]
            if name not in made:
                d = tmp_path_factory.mktemp(name)
                DERIVED[name](d)
                made[name] = str(d)
            return made[name]
        return str(FIX / value) if (FIX / value).exists() else value

    return resolve


# ------------------------------------------------------------------------------------------------------ running
def entry(code: str) -> dict:
    assert code in MANIFEST, f"{code} has no line in fixtures/manifest.toml"
    e = dict(MANIFEST[code])
    fixture = RULES[code].fixture if code in RULES else ""
    if "data" not in e and fixture.endswith((".jsonl", ".json")):
        e["data"] = fixture
    return e


def run(e: dict, spec, data: str, template: str | None, tokenizer: str | None) -> tuple[int, set[str], str]:
    """The real command line on one fixture: (exit status, codes found, output)."""
    command = e.get("command", "check")
    args = [command, str(FIX / data), "--format", "json"]
    if template:
        args += ["--template", spec(template)]
    if tokenizer:
        args += ["--tokenizer", spec(tokenizer)]
    if command == "check":
        args += ["--select", e["scope"], "--jobs", "1"] + [a for c in e.get("ignore", []) for a in ("--ignore", c)]
    elif command in ("audit", "verify-model"):
        args += ["--select", e["scope"]]
    args += [str(a) for a in e.get("args", [])]
    r = CliRunner().invoke(cli, args)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    start = r.output.find("{")
    out = json.loads(r.output[start:]) if start >= 0 else {"findings": []}
    found = out["findings"]
    if command == "scan":   # the scan reports every code; the manifest's scope applies here
        from tmplcheck.validator.codes import matches

        found = [f for f in found if matches(f["code"], [e["scope"]]) and not matches(f["code"], e.get("ignore", []))]
    why = "; ".join(f"{f['code']} line {f['line']}: {f['message'][:160]}" for f in found[:6])
    return r.exit_code, {f["code"] for f in found}, why or r.output[-600:]


CODES = sorted(RULES)


def test_manifest_covers_every_code_and_only_known_fields():
    assert sorted(MANIFEST) == CODES, "every code needs one line in fixtures/manifest.toml (and only real codes)"
    for code, e in MANIFEST.items():
        assert set(e) <= FIELDS, (code, set(e) - FIELDS)
        data = entry(code).get("data")
        assert data and (FIX / data).is_file(), (code, data)


@pytest.mark.parametrize("code", CODES)
def test_fixture_triggers_exactly_its_code_and_the_clean_counterpart_nothing(code, spec, request):
    e = entry(code)
    if "xfail" in e:
        request.applymarker(pytest.mark.xfail(reason=e["xfail"], strict=True))
    e.setdefault("scope", code[0])
    fam_data, fam_template, fam_tokenizer = CLEAN[code[0]]
    template, tokenizer = e.get("template"), e.get("tokenizer")
    status, codes, out = run(e, spec, e["data"], template, tokenizer)
    assert codes == {code, *e.get("also", [])}, out
    wants_error = any(RULES[c].severity.value == "error" for c in codes)
    assert status == (1 if wants_error else 0), out
    status, codes, out = run(e, spec, e.get("clean", fam_data), e.get("clean_template", fam_template),
                             e.get("clean_tokenizer", fam_tokenizer))
    assert codes == set() and status == 0, out
