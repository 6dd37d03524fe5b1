"""``tmplcheck export RUN_DIR``: the trained model as a GGUF (llama.cpp's own converter) and an Ollama Modelfile,
both speaking the template the data was validated and trained with.

1. The whole model: ``merged/`` when the run has one, ``model/`` for a full fine-tune, else the LoRA adapter merged
   into the base model now (in float32; the converter then writes ``--outtype``).
2. A staging folder: those weights (linked, not copied) and the run's tokenizer, with the validated template as
   ``chat_template``, ``eos_token`` = the template's end-of-turn token.
3. ``convert_hf_to_gguf.py`` of the pinned llama-cpp-python sdist (``tmplcheck.assets.ensure_converter``), run
   with this Python, its own gguf-py first on its path.
4. What the converter cannot be told through the folder (eot/eom ids, ``add_bos_token`` for the template's BOS) is
   set with the gguf package's own copier (``gguf.scripts.gguf_new_metadata.copy_with_new_metadata``).
5. ``Modelfile``: ``FROM ./model.gguf``, a TEMPLATE derived from the validated template (its wrapper around each
   role's content and its generation prompt, BOS left to the tokenizer), one ``PARAMETER stop`` per end-of-turn.
6. ``verify-model``'s checks on both; ``export.json`` records what was written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUTTYPES = ("f32", "f16", "bf16", "q8_0")


class ExportError(RuntimeError):
    """A user-facing reason the export cannot be made."""


@dataclass
class ExportResult:
    out_dir: Path
    gguf: Path
    modelfile: Path | None
    manifest: dict[str, Any]
    findings: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------- the weights
def _weights_dir(run_dir: Path, run: dict, work: Path, info) -> Path:
    if (run_dir / "merged" / "config.json").is_file():
        return run_dir / "merged"
    if run.get("mode") != "lora" and (run_dir / "model" / "config.json").is_file():
        return run_dir / "model"
    if run.get("mode") == "lora":
        info("merging the LoRA adapter into the base model (float32; the converter writes --outtype)")
        import torch
        from tmplcheck.trainer import load_run

        model, _, _ = load_run(run_dir, device="cpu", dtype=torch.float32)
        merged = model.merge_and_unload()
        out = work / "merged"
        merged.save_pretrained(str(out))
        return out
    raise ExportError(f"{run_dir}: no model/ or merged/ folder with a config.json")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.symlink(src.resolve(), dst)
    except OSError:
        shutil.copy2(src, dst)


_WEIGHT_FILES = (".safetensors", ".bin", ".json", ".model", ".txt", ".py")


def _staging(weights: Path, tok_dir: Path, template: Any, end_of_turn: list[str], stage: Path) -> None:
    """Weights + tokenizer + the validated template and end-of-turn eos, as the converter reads them."""
    stage.mkdir(parents=True)
    for f in weights.iterdir():
        if f.is_file() and f.suffix in _WEIGHT_FILES and not f.name.startswith(("tokenizer", "special_tokens",
                                                                                  "chat_template")):
            _link_or_copy(f, stage / f.name)
    for f in tok_dir.iterdir():
        if f.is_file():
            shutil.copy2(f, stage / f.name)
    tc_path = stage / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text(encoding="utf-8")) if tc_path.is_file() else {}
    tc["chat_template"] = template.source
    if end_of_turn:
        tc["eos_token"] = end_of_turn[0]
    tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (stage / "chat_template.jinja").write_text(template.source, encoding="utf-8")


def run_converter(stage: Path, outfile: Path, outtype: str, info) -> str:
    """``convert_hf_to_gguf.py STAGE --outfile OUTFILE --outtype OUTTYPE`` (the sdist's), with this Python; its
    log tail on failure."""
    from tmplcheck.assets import AssetError, ensure_converter

    try:
        conv = ensure_converter()
    except AssetError as e:
        raise ExportError(f"llama.cpp's converter is not available: {e}") from None
    cmd = [sys.executable, str(conv / "convert_hf_to_gguf.py"), str(stage), "--outfile", str(outfile),
           "--outtype", outtype]
    info(f"converting with llama.cpp's convert_hf_to_gguf.py (--outtype {outtype})")
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    env["PYTHONPATH"] = os.pathsep.join([str(conv / "gguf-py"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(conv))
    if p.returncode != 0 or not outfile.is_file():
        tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-15:])
        raise ExportError(f"convert_hf_to_gguf.py failed (exit {p.returncode}):\n{tail}")
    return p.stderr


# ------------------------------------------------------------------------------------------ metadata, the gguf way
def set_metadata(src: Path, dst: Path, changes: dict[str, Any], remove: tuple[str, ...] = ()) -> None:
    """Copy the GGUF ``src`` to ``dst`` with key/values changed, added (``changes``: key → value; str, bool or
    int, written as STRING, BOOL, UINT32) or removed, with the gguf package's own copier."""
    import logging

    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    logging.getLogger("gguf-new-metadata").setLevel(logging.WARNING)
    reader = gguf.GGUFReader(str(src), "r")
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    align = reader.fields.get(gguf.Keys.General.ALIGNMENT)
    writer = gguf.GGUFWriter(str(dst), arch=arch, endianess=reader.endianess)
    if align is not None:
        writer.data_alignment = align.contents()
    new: dict[str, Any] = {}
    for k, v in changes.items():
        t = (gguf.GGUFValueType.BOOL if isinstance(v, bool) else gguf.GGUFValueType.UINT32 if isinstance(v, int)
             else gguf.GGUFValueType.STRING)
        new[k] = MetadataDetails(t, v)
    copy_with_new_metadata(reader, writer, new, list(remove))


def _export_metadata(gguf_path: Path, eot_ids: list[int], add_bos: bool, template: Any, info) -> dict[str, Any]:
    """Set eos/eot(/eom) = the end-of-turn ids and add_bos_token to the template's BOS, where the converter wrote
    otherwise; returns the final values."""
    from tmplcheck.validator.gguf_header import read_header
    from tmplcheck.validator import serving as S

    h = read_header(gguf_path)
    want: dict[str, Any] = {S.GGUF_ADD_BOS: add_bos, "tokenizer.ggml.add_eos_token": False,
                            S.GGUF_TEMPLATE: template.source}
    if eot_ids:
        want[S.GGUF_EOS] = eot_ids[0]
        want[S.GGUF_EOT] = eot_ids[0]
        if len(eot_ids) > 1:
            want[S.GGUF_EOM] = eot_ids[1]
    changes = {k: v for k, v in want.items() if h.get(k) != v}
    if changes:
        info("setting " + ", ".join(f"{k.split('.')[-1]}={v if k != S.GGUF_TEMPLATE else '<validated>'}"
                                    for k, v in changes.items()))
        tmp = gguf_path.with_suffix(".meta.tmp")
        set_metadata(gguf_path, tmp, changes)
        os.replace(tmp, gguf_path)
    h = read_header(gguf_path)
    keys = (S.GGUF_EOS, S.GGUF_EOT, S.GGUF_EOM, S.GGUF_BOS, S.GGUF_ADD_BOS, "tokenizer.ggml.add_eos_token")
    out = {k.split("tokenizer.", 1)[-1]: h.get(k) for k in keys if h.get(k) is not None}
    out["chat_template"] = "<validated template>" if h.get(S.GGUF_TEMPLATE) == template.source else "<other>"
    return out


# ------------------------------------------------------------------------------------------------- Modelfile
_PROBE = "\x01{i}\x02"


def _go_literal(s: str) -> str:
    if "{{" in s:
        raise ExportError("the template's text contains '{{', which an Ollama TEMPLATE cannot hold literally")
    return s


def modelfile_template(template: Any) -> str:
    """An Ollama TEMPLATE (``range .Messages``) rendering the validated template's format: for each role, the text
    the template writes around a message's content, then the generation prompt; BOS left to the tokenizer.
    ``ExportError`` when the template is not one wrapper per message (the caller then writes no Modelfile)."""
    from tmplcheck.validator.serving import strip_bos

    bos = template.meta.bos_token
    roles = ["system", "user", "assistant"] if template.meta.system_role else ["user", "assistant"]
    wrap: dict[str, tuple[str, str]] = {}
    for r in roles:
        probe = _PROBE.format(i=0)
        text = strip_bos(template.render([{"role": r, "content": probe}]), bos)
        if text.count(probe) != 1:
            raise ExportError(f"the template does not write a {r} message's content exactly once")
        pre, post = text.split(probe)
        wrap[r] = (pre, post)
    gen = strip_bos(template.render([{"role": "user", "content": _PROBE.format(i=0)}], add_generation_prompt=True),
                    bos)
    gen = gen.split(_PROBE.format(i=0), 1)[1]
    if not gen.startswith(wrap["user"][1]):
        raise ExportError("the generation prompt does not follow the user turn's end")
    gen = gen[len(wrap["user"][1]):]
    branches = []
    for k, r in enumerate(roles):
        pre, post = (_go_literal(x) for x in wrap[r])
        kw = "if" if k == 0 else "else if"
        branches.append(f'{{{{ {kw} eq .Role "{r}" }}}}{pre}{{{{ .Content }}}}{post}')
    return "{{- range .Messages }}" + "".join(branches) + "{{ end }}{{ end }}" + _go_literal(gen)


def _modelfile_text(gguf_name: str, tmpl: str, stops: list[str], template: Any) -> str:
    lines = [f"# Written by tmplcheck export: the template {template.meta.name!r} the data was validated and "
             "trained with", f"FROM ./{gguf_name}", f'TEMPLATE """{tmpl}"""']
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stops]
    return "\n".join(lines) + "\n"


def _check_modelfile_roundtrip(template: Any, tmpl_text: str, rows: list[Any]) -> None:
    """The TEMPLATE must render every probe and approved prompt as the validated template does (minus BOS)."""
    from tmplcheck.validator import serving as S
    from tmplcheck.validator.gotemplate import GoTemplate, render_ollama

    t = GoTemplate(tmpl_text)
    exp = S.Expected(template, rows=rows)
    for path, line, msgs, kw in exp.conversations():
        p = S.prompt_of(msgs)
        if p is None or kw:
            continue
        want = S.strip_bos(template.render(p, add_generation_prompt=True), template.meta.bos_token)
        got = render_ollama(t, p)
        if got != want:
            raise ExportError(f"the derived Ollama TEMPLATE renders {path}:{line} differently from the template "
                              f"({cd_first(want, got)})")


def cd_first(a: str, b: str) -> str:
    from tmplcheck.validator import crossdiff as cd

    ops = cd.diff_ops(a, b)
    if not ops:
        return "same text"
    o = ops[0]
    return f"at {o.a0}: {cd.visible(a[o.a0:o.a1])[:50]!r} vs {cd.visible(b[o.b0:o.b1])[:50]!r}"


# ---------------------------------------------------------------------------------------------------- export
def approved_rows(run_dir: Path, run: dict, limit: int | None = 200) -> list[Any]:
    """The approved dataset's rows (run.json's data path), when it is still there and unchanged."""
    from tmplcheck.validator.approval import sha256_file
    from tmplcheck.validator.ingest import usable_conversations

    data = (run.get("data") or {}) if isinstance(run.get("data"), dict) else {}
    p = Path(data.get("path") or "")
    if not data.get("path") or not p.is_file():
        return []
    if data.get("sha256") and sha256_file(p) != data["sha256"]:
        return []
    return usable_conversations(p, limit)


def export_run(run_dir: Path, *, outtype: str = "f16", out_dir: Path | None = None, info=lambda s: None,
               force: bool = False) -> ExportResult:
    from tmplcheck.artifacts.report import load_run_template
    from tmplcheck.trainer import RunDirError, read_run_config
    from tmplcheck.validator import serving as S
    from tmplcheck.validator.gguf_header import read_header
    from tmplcheck.validator.tokenizer import load_tokenizer

    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    if outtype not in OUTTYPES:
        raise ExportError(f"--outtype must be one of {', '.join(OUTTYPES)}, not {outtype!r}")
    try:
        run = read_run_config(run_dir)
    except RunDirError as e:
        raise ExportError(str(e)) from None
    if not (run_dir / "tokenizer").is_dir():
        raise ExportError(f"{run_dir}: no tokenizer/ folder")
    out = Path(out_dir) if out_dir else run_dir / "export"
    if out.exists() and any(out.iterdir()) and not force:
        raise ExportError(f"{out}: already exists and is not empty (--force replaces it)")
    template = load_run_template(run_dir, run)
    tok = load_tokenizer(str(run_dir / "tokenizer"))
    exp = S.Expected(template, tok, rows=approved_rows(run_dir, run), origin=str(run_dir))
    eot = exp.end_of_turn
    missing = [s for s, i in eot.items() if i is None]
    if missing:
        raise ExportError(f"the run's tokenizer has no single id for the end-of-turn {', '.join(missing)}")
    eot_ids = list(dict.fromkeys(i for i in eot.values() if i is not None))
    add_bos = exp.training_bos() > 0

    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        work = tmp / ".work"
        weights = _weights_dir(run_dir, run, work, info)
        stage = work / "hf"
        _staging(weights, run_dir / "tokenizer", template, list(eot), stage)
        gguf_path = tmp / "model.gguf"
        log = run_converter(stage, gguf_path, outtype, info)
        meta = _export_metadata(gguf_path, eot_ids, add_bos, template, info)
        notes: list[str] = []
        modelfile = None
        try:
            tmpl_text = modelfile_template(template)
            _check_modelfile_roundtrip(template, tmpl_text, exp.rows)
            (tmp / "Modelfile").write_text(_modelfile_text("model.gguf", tmpl_text, list(eot), template),
                                           encoding="utf-8")
            modelfile = "Modelfile"
        except ExportError as e:
            notes.append(f"no Modelfile: {e}")
        shutil.rmtree(work, ignore_errors=True)
        h = read_header(gguf_path)
        converter = next((ln.split("converted by", 1)[-1].strip() for ln in log.splitlines()
                          if "converted by" in ln), None)
        manifest = {
            "run_dir": str(run_dir.resolve()),
            "gguf": "model.gguf",
            "modelfile": modelfile,
            "outtype": outtype,
            "bytes": gguf_path.stat().st_size,
            "tensors": h.tensor_count,
            "converter": "llama-cpp-python 0.3.36 vendor/llama.cpp/convert_hf_to_gguf.py",
            "template": {"name": template.meta.name, "sha256": template.sha256},
            "end_of_turn": {s: i for s, i in eot.items()},
            "metadata": meta,
            "training_bos": exp.training_bos(),
            "weights": str(weights if not str(weights).startswith(str(tmp)) else "LoRA merged at export"),
            "seconds": None,
            "notes": notes,
        }
        if converter:
            manifest["converter_log"] = converter
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    findings = verify_export(out, exp)
    manifest["seconds"] = round(time.perf_counter() - t0, 1)
    manifest["verify"] = {"errors": sum(f.severity.value == "error" for f in findings),
                          "codes": sorted({f.code for f in findings})}
    (out / "export.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return ExportResult(out, out / "model.gguf", out / modelfile if modelfile else None, manifest, findings, notes)


def verify_export(out: Path, exp: Any) -> list[Any]:
    from tmplcheck.validator import serving as S
    from tmplcheck.validator.gguf_header import read_header

    fs = S.check_model(exp, S.gguf_meta(read_header(out / "model.gguf").fields, str(out / "model.gguf")))
    mf = out / "Modelfile"
    if mf.is_file():
        add_bos = S.gguf_meta(read_header(out / "model.gguf").fields, "").add_bos
        fs += S.check_modelfile(exp, mf.read_text(encoding="utf-8"), path=str(mf), add_bos=add_bos)
    return S.fold_per_file(fs)
