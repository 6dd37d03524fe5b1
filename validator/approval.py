"""Approval stamps: the gate's proof, written next to a dataset it passed, that the trainer checks before training.

A stamp (``<data>.tmplcheck.json``) records what was checked, as hashes: the dataset's bytes, the template's text,
the tokenizer's files, the check configuration and the tmplcheck version, plus the gate's summary. The trainer
recomputes each hash and refuses the dataset when any of them differs, naming which one (``verify_stamp``).

No torch here: this module belongs to the validator core.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tmplcheck import __version__
from tmplcheck.fsutil import write_atomic

STAMP_SUFFIX = ".tmplcheck.json"
STAMP_FORMAT = 1
#: settings of the check that do not change what it decides (left out of the configuration hash)
#: settings that do not change what the gate decides, or that are pinned another way (``render_defaults``, the
#: template arguments given by --tools/--documents/--template-kwargs, is pinned by its digest ``template_args``)
NEUTRAL_SETTINGS = frozenset({"jobs", "progress", "render_defaults"})
#: files of a tokenizer directory that decide how text becomes ids (and which ids stop generation)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "spiece.model",
                   "generation_config.json", "chat_template.jinja", "chat_template.json")
#: the parts a stamp pins, in the order mismatches are reported
PARTS = ("bytes", "template", "tokenizer", "config", "version")


class StampError(ValueError):
    """A stamp that cannot be written (the dataset did not pass) or read (not JSON, wrong shape)."""


def stamp_path(data_path: str | os.PathLike) -> Path:
    """Where the stamp of ``data_path`` lives: ``<data>.tmplcheck.json`` beside it."""
    p = Path(data_path)
    return p.with_name(p.name + STAMP_SUFFIX)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------------------------- fingerprints
def template_fingerprint(template: Any) -> dict[str, Any] | None:
    """``{"spec", "name", "sha256"}`` of a template given as a spec string or a loaded ``Template``; None for none."""
    if template is None:
        return None
    spec = template if isinstance(template, str) else None
    if isinstance(template, str):
        from tmplcheck.templates import load_template

        template = load_template(template)
    return {"spec": spec or template.meta.name, "name": template.meta.name, "sha256": sha256_text(template.source)}


def _tokenizer_files(spec: str | None, tok: Any) -> list[Path]:
    """The files a tokenizer was built from: the file or directory the spec names, else the loaded tokenizer's
    HF directory (built-in names and hub ids resolve to one)."""
    candidates: list[Path] = []
    if spec:
        p = Path(spec).expanduser()
        if p.is_file():
            return [p]
        if p.is_dir():
            candidates.append(p)
    hf_dir = getattr(tok, "hf_dir", None)
    if hf_dir:
        candidates.append(Path(hf_dir))
    for d in candidates:
        files = [d / n for n in TOKENIZER_FILES if (d / n).is_file()]
        if files:
            return files
    return []


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any] | None:
    """``{"spec", "name", "sha256", "files"}`` of a tokenizer given as a spec string or a loaded ``Tokenizer``;
    None when no tokenizer was given (the gate's token stage, which verifies the masks, did not run).

    The hash covers the bytes of the tokenizer's files (name → sha256); when no file can be found (an object
    built in memory) it covers the serialised vocabulary instead.
    """
    if tokenizer is None:
        return None
    spec = tokenizer if isinstance(tokenizer, str) else None
    if isinstance(tokenizer, str):
        from tmplcheck.validator.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    files = _tokenizer_files(spec, tokenizer)
    hashes = {f.name: sha256_file(f) for f in files}
    if hashes:
        digest = sha256_text(json.dumps(hashes, sort_keys=True))
    else:
        inner = getattr(tokenizer, "backend", None)
        to_str = getattr(inner, "to_str", None)
        if to_str is None:
            raise StampError(f"cannot fingerprint tokenizer {getattr(tokenizer, 'name', tokenizer)!r}: "
                             "it has no files and no serialisable vocabulary")
        digest = sha256_text(to_str())
    return {"spec": spec or getattr(tokenizer, "name", ""), "name": getattr(tokenizer, "name", ""),
            "sha256": digest, "files": hashes}


def config_fingerprint(cfg: Any) -> dict[str, Any]:
    """The check settings that change what the gate decides (``StageConfig`` minus template/tokenizer, which are
    hashed by content, and minus neutral settings such as the number of worker processes)."""
    extra = {k: v for k, v in sorted((getattr(cfg, "extra", None) or {}).items())
             if k not in NEUTRAL_SETTINGS and v not in (None, [], (), "")}
    settings = {"max_length": getattr(cfg, "max_length", None), **extra}
    return {"settings": settings, "sha256": sha256_text(json.dumps(settings, sort_keys=True, default=str))}


def fingerprint(data_path: str | os.PathLike, template: Any, tokenizer: Any, cfg: Any) -> dict[str, Any]:
    """Everything a stamp pins, computed now."""
    tmpl = template
    if isinstance(template, str):
        from tmplcheck.templates import load_template

        tmpl = load_template(template)
    tfp = template_fingerprint(tmpl)
    if tfp and isinstance(template, str):
        tfp["spec"] = template
    return {
        "bytes": {"sha256": sha256_file(data_path), "size": Path(data_path).stat().st_size},
        "template": tfp,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "config": config_fingerprint(cfg),
        "version": __version__,
    }


# ------------------------------------------------------------------------------------------------------ write / read
def _write_json_atomic(path: Path, obj: Any) -> None:
    write_atomic(path, [json.dumps(obj, indent=2, ensure_ascii=False), "\n"])


def build_stamp(data_path: str | os.PathLike, summary: dict[str, Any], cfg: Any) -> dict[str, Any]:
    fp = fingerprint(data_path, getattr(cfg, "template", None), getattr(cfg, "tokenizer", None), cfg)
    return {
        "tmplcheck_stamp": STAMP_FORMAT,
        "dataset": Path(data_path).name,
        "approved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **fp,
        "summary": summary,
    }


def checked_stages(summary: dict[str, Any], cfg: Any) -> list[str]:
    """Why a gate summary does not prove what ``cfg`` names (empty when it does): the template stage must have run
    on the template ``cfg`` names, the token stage on its tokenizer, and at least one of them at all (a stamp on
    the D checks alone would let the trainer skip every template and mask check)."""
    template, tokenizer = getattr(cfg, "template", None), getattr(cfg, "tokenizer", None)
    out = []
    if template is None and tokenizer is None:
        out.append("only the dataset checks ran (no --template, no --tokenizer): nothing about the template or "
                   "the training masks was checked")
    read = summary.get("rows_read")
    if template is not None:
        ts = summary.get("template")
        if not isinstance(ts, dict):
            out.append(f"the configuration names template {template!r} but the gate did not run the template stage")
        elif read is not None and ts.get("rows") != read:
            out.append(f"the template stage saw {ts.get('rows')} of {read} readable rows")
        else:
            fp = template_fingerprint(template)
            if fp and ts.get("sha256") and ts["sha256"] != fp["sha256"]:
                out.append(f"the template stage ran on another template ({ts.get('template')}) than {template!r}")
    if tokenizer is not None:
        ks = summary.get("tokens")
        if not isinstance(ks, dict):
            out.append(f"the configuration names tokenizer {tokenizer!r} but the gate did not run the token stage")
    return out


def write_stamps(result: Any, cfg: Any) -> Path:
    """Write the approval stamp for a passed ``GateResult`` next to its dataset, atomically; return its path.

    Refuses (``StampError``) a result that failed, or one whose summary does not show the template and token
    stages that ``cfg`` names (see :func:`checked_stages`): a stamp only vouches for what was checked."""
    if not result.passed:
        raise StampError(f"{result.path}: the gate found {result.errors} error(s); nothing to approve")
    gaps = checked_stages(result.summary, cfg)
    if gaps:
        raise StampError(f"{result.path}: not stamped: " + "; ".join(gaps))
    data = Path(result.path)
    stamp = build_stamp(data, result.summary, cfg)
    out = stamp_path(data)
    _write_json_atomic(out, stamp)
    return out


def read_stamp(data_path: str | os.PathLike) -> dict[str, Any] | None:
    """The stamp next to ``data_path``, or None when there is none; ``StampError`` when it is unreadable."""
    p = stamp_path(data_path)
    if not p.is_file():
        return None
    try:
        stamp = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StampError(f"{p}: unreadable approval stamp ({e})") from None
    if not isinstance(stamp, dict) or stamp.get("tmplcheck_stamp") != STAMP_FORMAT:
        raise StampError(f"{p}: not a tmplcheck approval stamp (format {STAMP_FORMAT})")
    return stamp


def _short(h: str | None) -> str:
    return (h or "none")[:12]


def verify_stamp(data_path: str | os.PathLike, template: Any, tokenizer: Any, cfg: Any) -> list[str]:
    """Compare the stamp next to ``data_path`` with the dataset, template, tokenizer and configuration now.

    Returns one message per mismatch, each starting with the part that changed (``bytes:``, ``template:``,
    ``tokenizer:``, ``config:``, ``version:``) or ``stamp:`` when there is no usable stamp; empty when it matches.
    ``template``/``tokenizer`` are spec strings or loaded objects (None: not checked).
    """
    sp = stamp_path(data_path)
    try:
        stamp = read_stamp(data_path)
    except StampError as e:
        return [f"stamp: {e}"]
    if stamp is None:
        return [f"stamp: no approval stamp at {sp}"]
    out: list[str] = []
    if not (stamp.get("summary") or {}).get("passed", False):
        out.append(f"stamp: {sp} records a dataset that did not pass the gate")
    now = fingerprint(data_path, template, tokenizer, cfg)

    old_b, new_b = stamp.get("bytes") or {}, now["bytes"]
    if old_b.get("sha256") != new_b["sha256"]:
        out.append(f"bytes: the dataset changed since it was approved (sha256 {_short(old_b.get('sha256'))} → "
                   f"{_short(new_b['sha256'])}, {old_b.get('size')} → {new_b['size']} bytes)")

    old_t, new_t = stamp.get("template"), now["template"]
    if old_t is None:
        out.append("template: the dataset was approved without a template check")
    elif new_t is None or old_t.get("sha256") != new_t["sha256"]:
        out.append(f"template: {new_t['spec'] if new_t else 'none'} (sha256 {_short(new_t and new_t['sha256'])}) "
                   f"is not the template the dataset was approved with ({old_t.get('spec')}, "
                   f"sha256 {_short(old_t.get('sha256'))})")

    old_k, new_k = stamp.get("tokenizer"), now["tokenizer"]
    if old_k is None:
        out.append("tokenizer: the dataset was approved without a tokenizer check (--tokenizer), so its token "
                   "and mask checks never ran")
    elif new_k is None or old_k.get("sha256") != new_k["sha256"]:
        changed = sorted(n for n in set(old_k.get("files", {})) | set((new_k or {}).get("files", {}))
                         if old_k.get("files", {}).get(n) != (new_k or {}).get("files", {}).get(n))
        detail = f"; files that differ: {', '.join(changed)}" if changed else ""
        out.append(f"tokenizer: {new_k['spec'] if new_k else 'none'} (sha256 {_short(new_k and new_k['sha256'])}) "
                   f"is not the tokenizer the dataset was approved with ({old_k.get('spec')}, "
                   f"sha256 {_short(old_k.get('sha256'))}){detail}")

    old_c, new_c = stamp.get("config") or {}, now["config"]
    if old_c.get("sha256") != new_c["sha256"]:
        old_s, new_s = old_c.get("settings") or {}, new_c["settings"]
        diff = ", ".join(f"{k}: {old_s.get(k)!r} → {new_s.get(k)!r}" for k in sorted(set(old_s) | set(new_s))
                         if old_s.get(k) != new_s.get(k))
        out.append(f"config: the check settings differ from the approved ones ({diff or 'unknown'})")

    if stamp.get("version") != now["version"]:
        out.append(f"version: approved by tmplcheck {stamp.get('version')}, this is {now['version']}")
    return out
