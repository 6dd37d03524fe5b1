"""Export and verify-model, the fast parts: Modelfile parsing, Ollama's Go-template rendering, the TEMPLATE export
derives from a chat template, the metadata edit through the gguf package, and verify-model's checks on model folders
and export folders. Every G code's fixture and clean counterpart run through the CLI in test_manifest.py; the real
export of trained models (llama.cpp's converter) and generation through llama.cpp are in test_e2e_seed_failure.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from tmplcheck.cli import cli
from tmplcheck.validator.gotemplate import (GoTemplate, GoTemplateError, ModelfileError, parse_modelfile,
                                            render_ollama)

ROOT = Path(__file__).resolve().parent.parent
SERVING = ROOT / "fixtures" / "serving"
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]


def _verify(*args: str) -> tuple[int, dict]:
    r = CliRunner().invoke(cli, ["verify-model", *args, "--format", "json"])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, json.loads(r.output[r.output.find("{"):])


# --------------------------------------------------------------------------------------------------- Modelfiles
def test_modelfile_parsing_blocks_quotes_and_parameters():
    mf = parse_modelfile('# c\nFROM ./m.gguf\nTEMPLATE """{{ .System }}\n{{ .Prompt }}"""\n'
                         'PARAMETER stop "<|eot_id|>"\nPARAMETER stop <|end|>\nPARAMETER temperature 0.2\n'
                         'SYSTEM """You are terse."""\n')
    assert mf.from_ == "./m.gguf" and mf.from_line == 2
    assert mf.template == "{{ .System }}\n{{ .Prompt }}" and mf.template_line == 3
    assert mf.stops == [("<|eot_id|>", 5), ("<|end|>", 6)] and mf.parameters["temperature"] == ["0.2"]
    assert mf.system == "You are terse."


@pytest.mark.parametrize("text, line, what", [
    ('FROM x\nTEMPLATE """{{ .Prompt }}\n', 2, "never closed"),
    ("TEMPLATE {{ .Prompt }}\n", 0, "no FROM"),
    ("FROM x\nFRUM y\n", 2, "unknown instruction"),
])
def test_modelfile_errors_are_located(text, line, what):
    with pytest.raises(ModelfileError) as e:
        parse_modelfile(text)
    assert e.value.line == line and what in str(e.value)


def test_ollama_legacy_template_runs_per_turn_and_cuts_at_response():
    t = GoTemplate("{{ if .System }}S:{{ .System }}|{{ end }}{{ if .Prompt }}U:{{ .Prompt }}|{{ end }}"
                   "A:{{ .Response }}|")
    assert render_ollama(t, CHAT) == "S:Be brief.|U:Hi|A:Hello.|U:Bye|A:"


def test_ollama_messages_template_with_range_variables_and_trim():
    t = GoTemplate('{{- range $i, $m := .Messages }}\n  {{- if eq $m.Role "user" }}[{{ $i }}u:{{ .Content }}]'
                   '{{- else if or (eq .Role "system") (eq .Role "tool") }}<s:{{ .Content }}>'
                   "{{- else }}(a:{{ .Content }}){{ end }}{{ end }}>")
    assert render_ollama(t, CHAT) == "<s:Be brief.>[1u:Hi](a:Hello.)[3u:Bye]>"


@pytest.mark.parametrize("src", ["{{ with .System }}x{{ end }}", "{{ if .System }}x", "{{ template \"a\" }}",
                                 "{{ printf \"%s\" .Prompt }}", "{{ .Prompt "])
def test_go_template_outside_ollamas_subset_is_an_error(src):
    with pytest.raises(GoTemplateError):
        GoTemplate(src)


# ------------------------------------------------------------------------------------- the exported TEMPLATE
@pytest.mark.parametrize("name", ["llama-3", "chatml", "zephyr"])
def test_derived_ollama_template_renders_like_the_chat_template(name):
    from tmplcheck.templates import load_template
    from tmplcheck.trainer.export import modelfile_template
    from tmplcheck.validator.serving import PROBES, prompt_of, strip_bos

    t = load_template(name)
    go = GoTemplate(modelfile_template(t))
    for conv in PROBES:
        msgs = [m for m in conv if t.meta.system_role or m["role"] != "system"]
        p = prompt_of(msgs)
        assert render_ollama(go, p) == strip_bos(t.render(p, add_generation_prompt=True), t.meta.bos_token)


@pytest.mark.parametrize("name, why", [
    ("gemma-3", "system message's content exactly once"),        # the system prompt is folded into the user turn
    ("phi-3", "generation prompt does not follow"),              # an eos after the last turn, not after each
])
def test_a_template_that_is_not_one_wrapper_per_message_gets_no_modelfile(name, why):
    from tmplcheck.templates import load_template
    from tmplcheck.trainer.export import ExportError, modelfile_template

    with pytest.raises(ExportError, match=why):
        modelfile_template(load_template(name))


# --------------------------------------------------------------------------------------- metadata and folders
def test_set_metadata_through_the_gguf_package(tmp_path):
    from tmplcheck.trainer.export import set_metadata
    from tmplcheck.validator.gguf_header import read_header

    dst = tmp_path / "m.gguf"
    set_metadata(SERVING / "clean.gguf", dst, {"tokenizer.ggml.eos_token_id": 128001,
                                               "tokenizer.ggml.add_bos_token": False},
                 remove=("tokenizer.ggml.eot_token_id",))
    h, before = read_header(dst), read_header(SERVING / "clean.gguf")
    assert h.get("tokenizer.ggml.eos_token_id") == 128001 and h.get("tokenizer.ggml.add_bos_token") is False
    assert "tokenizer.ggml.eot_token_id" not in h.fields
    assert h.get("tokenizer.chat_template") == before.get("tokenizer.chat_template")
    code, out = _verify(str(dst), "-t", "llama-3", "-k", "llama-3", "--select", "G")
    assert code == 1 and sorted(f["code"] for f in out["findings"]) == ["G003", "G005"]


def _folder(tmp_path: Path, *, template: str | None, eos) -> Path:
    from tmplcheck.validator.tokenizer import load_tokenizer

    d = tmp_path / "model"
    shutil.copytree(load_tokenizer("llama-3").hf_dir, d)
    tc = json.loads((d / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    if template is not None:
        tc["chat_template"] = template
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    (d / "chat_template.jinja").unlink(missing_ok=True)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    return d


def test_model_folder_clean_and_broken(tmp_path):
    src = (ROOT / "templates" / "llama-3.jinja").read_text()
    d = _folder(tmp_path / "a", template=src, eos=[128001, 128009])
    code, out = _verify(str(d), "-t", "llama-3", "--select", "G")
    assert code == 0 and out["findings"] == [], out
    d = _folder(tmp_path / "b", template=None, eos=128001)
    code, out = _verify(str(d), "-t", "llama-3", "--select", "G")
    assert code == 1 and sorted(f["code"] for f in out["findings"]) == ["G001", "G003"], out
    g3 = next(f for f in out["findings"] if f["code"] == "G003")
    assert "128009" in g3["message"] and g3["pointer"].startswith("generation_config.json")


def test_export_folder_checks_gguf_and_modelfile_together(tmp_path):
    d = tmp_path / "export"
    d.mkdir()
    shutil.copy(SERVING / "clean.gguf", d / "clean.gguf")
    shutil.copy(SERVING / "stop_missing.Modelfile", d / "Modelfile")
    code, out = _verify(str(d), "-t", "llama-3", "-k", "llama-3", "--select", "G")
    assert code == 1 and [f["code"] for f in out["findings"]] == ["G007"], out
    assert out["findings"][0]["line"] == 1 and out["findings"][0]["path"].endswith("Modelfile")
    assert len(out["summary"]["checked"]) == 2


def test_modelfile_pointing_at_a_missing_gguf(tmp_path):
    m = tmp_path / "Modelfile"
    m.write_text((SERVING / "clean.Modelfile").read_text().replace("./clean.gguf", "./gone.gguf"))
    code, out = _verify(str(m), "-t", "llama-3", "--select", "G")
    assert code == 1 and [f["code"] for f in out["findings"]] == ["G009"] and "gone.gguf" in out["findings"][0][
        "message"]


def test_verify_model_needs_something_to_compare_with():
    r = CliRunner().invoke(cli, ["verify-model", str(SERVING / "clean.gguf")])
    assert r.exit_code == 2 and "--run RUN_DIR, or --template" in r.output


def test_x_codes_fold_per_file_and_text_report_runs():
    code, out = _verify(str(SERVING / "clean.gguf"), "-t", "llama-3")
    assert code == 0 and [f["code"] for f in out["findings"]] == ["X001"]
    assert out["findings"][0]["data"]["rows"] == 3
    r = CliRunner().invoke(cli, ["verify-model", str(SERVING / "no_template.gguf"), "-t", "llama-3"])
    assert r.exit_code == 1 and "G001" in r.output and "ChatML" in r.output


def test_converter_is_unpacked_from_the_pinned_sdist():
    from tmplcheck import assets

    d = assets.ensure_converter()
    assert (d / ".complete").read_text().strip() == "llama-cpp-python==0.3.36"
    assert (d / "convert_hf_to_gguf.py").is_file() and (d / "gguf-py" / "gguf" / "gguf_writer.py").is_file()
    assert (d / "conversion" / "llama.py").is_file()


def test_report_through_llamacpp_needs_the_export_first(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"template": {"name": "llama-3"}, "mode": "full"}))
    (run / "eval.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                                             {"role": "assistant", "content": "Hello."}]}) + "\n")
    r = CliRunner().invoke(cli, ["report", str(run), "--engine", "llamacpp"])
    assert r.exit_code == 1 and "no export/model.gguf" in r.output and "tmplcheck export" in r.output


def test_export_refuses_what_is_not_a_run(tmp_path):
    r = CliRunner().invoke(cli, ["export", str(tmp_path)])
    assert r.exit_code == 2 and "not a tmplcheck run directory (no run.json)" in r.output
