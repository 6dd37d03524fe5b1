"""Load a chat template from wherever models keep one, and work out its metadata.

Sources: a registry name; a ``.jinja`` (or any text) file; a model directory (``chat_template.jinja``, else
``chat_template.json``, else ``tokenizer_config.json``'s ``chat_template``, a string or the named-templates list
form); a ``tokenizer_config.json`` file; a GGUF file (``tokenizer.chat_template`` metadata, read from the header
only by ``validator/gguf_header.py``); a hub id (``org/name`` or ``org/name@revision``) through ``huggingface_hub``, which honours
``HF_HUB_OFFLINE`` and its cache. ``SPEC::NAME`` picks a named template.

A loaded template gets its special tokens from the tokenizer config (or the GGUF vocabulary). If it renders
exactly like a built-in on the probe conversations it takes that built-in's metadata (``same_as``); otherwise its
end-of-turn, headers and generation prompt are inferred by rendering needles, and missing bos/eos tokens are
borrowed from the built-in family whose control tokens it writes (recorded in ``meta.notes``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from tmplcheck.templates import Template, TemplateMeta, builtin, registry
from tmplcheck.validator.render import TemplateLoadError, TemplateRenderError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")
_CONTROL = re.compile(r"<\|[^<>|\s]{1,48}\|>|<(?:s|/s|bos|eos|pad|unk|start_of_turn|end_of_turn)>"
                      r"|\[/?[A-Z][A-Z_]{1,30}\]")

_JINJA_COMMENT = re.compile(r"\{#.*?#\}", re.S)


def writes_bos(src: str, bos: str | None = None) -> bool:
    """Whether a template writes BOS itself: it uses the ``bos_token`` variable or the BOS string, outside Jinja
    comments (``{# ... bos_token ... #}`` renders nothing)."""
    code = _JINJA_COMMENT.sub("", src)
    return "bos_token" in code or bool(bos and bos in code)



def _token_text(v: Any) -> str | None:
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("content"), str):
        return v["content"]
    return None


def _pick_named(value: Any, name: str | None, where: str) -> str:
    """``chat_template`` is a string, or a list of ``{"name", "template"}`` (transformers' named form)."""
    if isinstance(value, str):
        if name and name != "default":
            raise TemplateLoadError(f"{where}: has one chat template, not a named {name!r} one", "missing")
        return value
    if isinstance(value, list):
        named = {d.get("name"): d.get("template") for d in value if isinstance(d, dict)}
        key = name or "default"
        if key in named and isinstance(named[key], str):
            return named[key]
        raise TemplateLoadError(f"{where}: no chat template named {key!r} (have: {', '.join(map(str, named))})",
                                "missing")
    raise TemplateLoadError(f"{where}: chat_template is {type(value).__name__}, not a string or a list", "load")


def _read_json(p: Path) -> dict:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TemplateLoadError(f"{p}: cannot read: {e}", "load") from None
    if not isinstance(data, dict):
        raise TemplateLoadError(f"{p}: not a JSON object", "load")
    return data


def _tokens_from_config(cfg: dict) -> dict[str, str]:
    out = {k: t for k in _SPECIAL_KEYS if (t := _token_text(cfg.get(k))) is not None}
    return out


def _from_tokenizer_config(cfg: dict, name: str | None, where: str) -> tuple[str, dict[str, str], list[str]]:
    if "chat_template" not in cfg:
        raise TemplateLoadError(f"{where}: has no chat_template", "missing")
    src = _pick_named(cfg["chat_template"], name, where)
    added = [d.get("content") for d in (cfg.get("added_tokens_decoder") or {}).values()
             if isinstance(d, dict) and d.get("special") and isinstance(d.get("content"), str)]
    return src, _tokens_from_config(cfg), added


def _from_dir(d: Path, name: str | None) -> tuple[str, dict[str, str], list[str], str]:
    cfg_path = d / "tokenizer_config.json"
    cfg = _read_json(cfg_path) if cfg_path.is_file() else {}
    tokens = _tokens_from_config(cfg)
    stm = d / "special_tokens_map.json"
    if stm.is_file():
        for k, v in _tokens_from_config(_read_json(stm)).items():
            tokens.setdefault(k, v)
    added = [x.get("content") for x in (cfg.get("added_tokens_decoder") or {}).values()
             if isinstance(x, dict) and x.get("special") and isinstance(x.get("content"), str)]
    if name and name != "default":
        named = d / "additional_chat_templates" / f"{name}.jinja"
        if named.is_file():
            return named.read_text(encoding="utf-8"), tokens, added, str(named)
        if "chat_template" in cfg:
            return _pick_named(cfg["chat_template"], name, str(cfg_path)), tokens, added, f"{cfg_path}::{name}"
        raise TemplateLoadError(f"{d}: no chat template named {name!r}", "missing")
    jinja = d / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8"), tokens, added, str(jinja)
    cj = d / "chat_template.json"
    if cj.is_file():
        data = _read_json(cj)
        if isinstance(data.get("chat_template"), str):
            return data["chat_template"], tokens, added, str(cj)
    if "chat_template" in cfg:
        return _pick_named(cfg["chat_template"], None, str(cfg_path)), tokens, added, str(cfg_path)
    raise TemplateLoadError(f"{d}: no chat_template.jinja, chat_template.json or tokenizer_config.json "
                            f"chat_template", "missing")


def _from_gguf(p: Path, name: str | None) -> tuple[str, dict[str, str]]:
    """The chat template (and BOS/EOS text) from a GGUF's metadata, read by ``validator/gguf_header.py``: the header
    and key/values only, never the tensors (a template from a multi-GB model loads in well under a second)."""
    from tmplcheck.validator.gguf_header import GGUFHeaderError, cached_header, token_text

    try:
        h = cached_header(p)
    except (GGUFHeaderError, OSError) as e:  # a corrupt file is the user's input, say so
        raise TemplateLoadError(f"{p}: not a readable GGUF file: {e}", "load") from None
    key = f"tokenizer.chat_template.{name}" if name and name != "default" else "tokenizer.chat_template"
    src = h.get(key)
    if not isinstance(src, str):
        names = [f[len("tokenizer.chat_template."):] for f in h.fields if f.startswith("tokenizer.chat_template.")]
        raise TemplateLoadError(f"{p}: no {key} in the GGUF metadata"
                                + (f" (named templates: {', '.join(names)})" if names else ""), "missing")
    tokens: dict[str, str] = {}
    for key_name, fname in (("bos_token", "tokenizer.ggml.bos_token_id"),
                            ("eos_token", "tokenizer.ggml.eos_token_id")):
        t = token_text(h, fname)
        if t is not None:
            tokens[key_name] = t
    return src, tokens


def _from_hub(repo: str, name: str | None) -> tuple[str, dict[str, str], list[str], str]:
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as e:  # pragma: no cover - huggingface_hub comes with transformers/tokenizers
        raise TemplateLoadError(f"{repo}: loading from the hub needs huggingface_hub ({e})", "load") from None
    repo_id, _, revision = repo.partition("@")
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    snapshot: Path | None = None
    errors = []
    for fname in ("chat_template.jinja", "tokenizer_config.json", "special_tokens_map.json"):
        try:
            got = hf_hub_download(repo_id, fname, revision=revision or None, local_files_only=offline)
            snapshot = Path(got).parent
        except (EntryNotFoundError, LocalEntryNotFoundError) as e:
            errors.append(f"{fname}: {type(e).__name__}")
        except HfHubHTTPError as e:
            errors.append(f"{fname}: {e}")
        except (OSError, ValueError) as e:
            errors.append(f"{fname}: {type(e).__name__}: {e}")
    if snapshot is None:
        how = "offline (HF_HUB_OFFLINE) and not in the cache" if offline else "not found"
        raise TemplateLoadError(f"{repo}: {how}: {'; '.join(errors)}", "missing")
    src, tokens, added, where = _from_dir(snapshot, name)
    return src, tokens, added, f"hub:{repo_id}" + (f"@{revision}" if revision else "")


def _identify(source: str, tokens: dict[str, str]) -> tuple[str | None, str | None]:
    """(built-in whose renders this template reproduces, built-in family to borrow tokens from)."""
    from tmplcheck.validator.checks.template import renders_like

    reg = registry()
    candidates = []
    for name, meta in reg.items():
        own = [t for t in meta.special_tokens if t not in (meta.bos_token, meta.eos_token)]
        hits = sum(1 for t in own if t in source)
        if own and hits == len(own):
            candidates.append((hits, name))
        elif not own and all(h.strip() in source for h in meta.role_headers.values() if h.strip()):
            candidates.append((0, name))
    candidates.sort(reverse=True)
    family = candidates[0][1] if candidates else None
    for _, name in candidates:
        b = builtin(name)
        if b.source == source:
            return name, name
        meta = b.meta
        trial = Template(TemplateMeta(name="probe", bos_token=tokens.get("bos_token", meta.bos_token),
                                      eos_token=tokens.get("eos_token", meta.eos_token)), source)
        if renders_like(trial, b):
            return name, name
    return None, family


def load(spec: str, *, tokenizer_config: dict | None = None) -> Template:
    spec = str(spec)
    if spec in registry():
        return builtin(spec)
    base, _, named = spec.partition("::")
    named = named or None
    p = Path(base).expanduser()
    added: list[str] = []
    tokens: dict[str, str] = {}
    if p.is_dir():
        src, tokens, added, origin = _from_dir(p, named)
        stem = p.resolve().name
    elif p.is_file():
        origin = str(p)
        stem = p.name.split(".")[0] if p.suffix != ".jinja" else p.name[:-len(".jinja")]
        if p.suffix == ".gguf":
            src, tokens = _from_gguf(p, named)
        elif p.suffix == ".json":
            data = _read_json(p)
            if "chat_template" in data and p.name == "chat_template.json" and isinstance(data["chat_template"], str):
                src = data["chat_template"]
                sibling = p.parent / "tokenizer_config.json"
                tokens = _tokens_from_config(_read_json(sibling)) if sibling.is_file() else {}
            else:
                src, tokens, added = _from_tokenizer_config(data, named, str(p))
            stem = p.resolve().parent.name
        else:
            try:
                src = p.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise TemplateLoadError(f"{p}: cannot read: {e}", "load") from None
    elif _HUB_ID.match(base) and not base.startswith((".", "/")):
        src, tokens, added, origin = _from_hub(base, named)
        stem = base.split("/")[-1].split("@")[0]
    else:
        raise TemplateLoadError(f"{spec}: not a built-in template ({', '.join(registry())}), a file, a directory "
                                f"or a hub id", "missing")
    if tokenizer_config:
        for k, v in _tokens_from_config(tokenizer_config).items():
            tokens.setdefault(k, v)
    # a tokenizer config (or GGUF metadata) was read: its special tokens are the truth, a null one included
    known = bool(tokenizer_config) or p.is_dir() or p.suffix in (".gguf", ".json") or not p.exists()
    return _finish(src, tokens, added, stem, origin, config_known=known)


def _missing_tokens(src: str, bos: str | None, eos: str | None) -> tuple[str, ...]:
    """The special-token variables the template reads (outside comments) that have no value."""
    code = _JINJA_COMMENT.sub("", src)
    return tuple(k for k, v in (("bos_token", bos), ("eos_token", eos)) if v is None and k in code)


def _finish(src: str, tokens: dict[str, str], added: list[str], stem: str, origin: str, *,
            config_known: bool = False) -> Template:
    """The loaded template with its metadata. With ``config_known`` (a tokenizer config or GGUF metadata was read)
    a special token the config leaves null or missing stays undefined, as transformers renders it (recorded in
    ``meta.tokens_undefined``; the gate says so, T020); a bare template file borrows it from the built-in family
    whose control tokens it writes (``meta.tokens_borrowed``, also T020, as an info)."""
    from tmplcheck.validator.checks.template import infer_structure
    from tmplcheck.validator.render import compile_template

    notes: list[str] = []
    variables = {k: v for k, v in tokens.items() if k not in ("bos_token", "eos_token")}
    try:
        compile_template(src)
        compiles = True
    except TemplateLoadError:
        compiles = False  # the gate reports the syntax error (T001) with its line
    same_as, family = _identify(src, tokens) if compiles else (None, None)
    same_as = _audited(src, same_as, notes)
    bos, eos = tokens.get("bos_token"), tokens.get("eos_token")
    undefined = _missing_tokens(src, bos, eos) if config_known else ()
    borrowed: list[str] = []
    if same_as:
        b = registry()[same_as]
        if not config_known:
            borrowed = [k for k, v, w in (("bos_token", bos, b.bos_token), ("eos_token", eos, b.eos_token))
                        if v is None and w and k in src]
            bos, eos = bos or b.bos_token, eos or b.eos_token
        meta = replace(b, name=stem, builtin=False, same_as=same_as, origin=origin, description=b.description,
                       bos_token=bos, eos_token=eos, has_generation_markers=False, upstream=None,
                       notes=(f"renders exactly like the built-in {same_as!r}",), tokens_undefined=undefined,
                       tokens_borrowed=tuple(borrowed))
        return Template(meta, src, variables=variables)
    if family and not config_known:
        fam = registry()[family]
        if bos is None and "bos_token" in src and fam.bos_token:
            bos = fam.bos_token
            borrowed.append("bos_token")
            notes.append(f"bos_token {bos!r} borrowed from the {family} family (it writes the same control tokens)")
        if eos is None and "eos_token" in src and fam.eos_token:
            eos = fam.eos_token
            borrowed.append("eos_token")
            notes.append(f"eos_token {eos!r} borrowed from the {family} family (it writes the same control tokens)")
    specials = sorted({m.group() for m in _CONTROL.finditer(src)} | {t for t in added if t and t in src}
                      | {t for t in (bos, eos) if t and (t in src)})
    meta = TemplateMeta(name=stem, description=f"loaded from {origin}", bos_token=bos, eos_token=eos,
                        bos_in_template=writes_bos(src, bos),
                        special_tokens=tuple(specials), origin=origin,
                        llama_cpp=None, tokens_undefined=undefined, tokens_borrowed=tuple(borrowed))
    tmpl = Template(meta, src, variables=variables)
    if compiles:
        st = infer_structure(tmpl)
        if st.ok:
            notes.append("end-of-turn, headers and generation prompt inferred by rendering needles")
            meta = replace(meta, end_of_turn=st.end_of_turn, role_headers=st.role_headers,
                           generation_prompt=st.generation_prompt, system_role=st.system_role,
                           default_tokenizer=registry()[family].default_tokenizer if family else None)
    meta = replace(meta, notes=tuple(notes))
    return Template(meta, src, variables=variables)


def _audited(src: str, same_as: str | None, notes: list[str]) -> str | None:
    """The static audit (``validator/audit.py``) of every loaded template: its findings are noted in the metadata
    (the gate, ``render`` and ``probe`` report them), and a template with audit errors is never called the same as a
    built-in (a gated payload renders like one for every conversation that does not trigger it)."""
    from tmplcheck.validator.audit import audit_source, summary_line
    from tmplcheck.validator.codes import RULES

    issues = audit_source(src)
    if issues:
        notes.append(f"static audit: {summary_line(issues)}")
    if any(RULES[i.code].severity.value == "error" for i in issues):
        return None
    return same_as


def describe_failure(e: Exception) -> str:
    if isinstance(e, (TemplateLoadError, TemplateRenderError)):
        return e.message
    return f"{type(e).__name__}: {e}"
