"""Chat templates: the registry of built-ins and the :class:`Template` every other part renders with.

Each built-in is ``<name>.jinja`` (the inference template) plus ``<name>.toml`` (its metadata) and, where a
training variant exists, ``<name>.train.jinja``: the same template with ``{% generation %}`` around what the
assistant is trained on (content plus end-of-turn). A test proves each variant renders byte-for-byte like its
template, and each template like the model's upstream template (or the format's published example).

``load_template(spec)`` takes a registry name, a ``.jinja`` file, a model directory, a ``tokenizer_config.json``,
a GGUF file or a hub id (see :mod:`tmplcheck.templates.loader`).
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from tmplcheck.validator.render import (
    DEFAULT_MAX_CHARS,
    DEFAULT_MAX_SECONDS,
    HFRenderer,
    Rendering,
    TemplateLoadError,
    TemplateRenderError,
    find_markers,
)

__all__ = ["TemplateMeta", "Template", "TemplateLoadError", "TemplateRenderError", "load_template", "registry",
           "builtin", "BUILTIN_DIR"]

BUILTIN_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class TemplateMeta:
    name: str                                  # registry name, e.g. "llama-3"; for loaded files the file stem
    description: str = ""
    bos_token: str | None = None               # e.g. "<|begin_of_text|>"
    eos_token: str | None = None               # the template's eos_token variable, e.g. "<|eot_id|>"
    bos_in_template: bool = False              # the template writes bos_token itself
    end_of_turn: tuple[str, ...] = ()          # strings that close an assistant turn, e.g. ("<|eot_id|>",)
    special_tokens: tuple[str, ...] = ()       # every control-token string the template writes
    role_headers: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    generation_prompt: str = ""                # text add_generation_prompt appends
    system_role: bool = True                   # False: the template has no system role (gemma)
    llama_cpp: str | None = None               # llama.cpp builtin name this corresponds to ("llama3", "chatml", ...)
    upstream: str | None = None                # upstream template file (sdist templates/) used as the oracle
    has_generation_markers: bool = False       # a {% generation %} training variant exists
    default_tokenizer: str | None = None       # built-in tokenizer name, e.g. "llama-3"
    builtin: bool = False                      # one of the registry's templates
    same_as: str | None = None                 # a loaded template that renders exactly like this built-in
    origin: str = ""                           # where it was loaded from (path, hub id, "builtin")
    notes: tuple[str, ...] = ()                # how the metadata was found (borrowed tokens, inferred turns)
    tokens_undefined: tuple[str, ...] = ()     # bos_token/eos_token the template reads that its config leaves null
    tokens_borrowed: tuple[str, ...] = ()      # ... that a bare template file borrowed from its built-in family


class Template:
    """A chat template: its Jinja source, its metadata, and renderers compiled once on first use."""

    def __init__(self, meta: TemplateMeta, source: str, *, training_source: str | None = None,
                 variables: dict[str, Any] | None = None, now: datetime | None = None,
                 max_seconds: float = DEFAULT_MAX_SECONDS, max_chars: int = DEFAULT_MAX_CHARS):
        if training_source is None and find_markers(source):
            training_source = source
        if training_source is not None and not meta.has_generation_markers:
            meta = replace(meta, has_generation_markers=True)
        self.meta = meta
        self.source = source
        self.training_source = training_source
        self.variables = dict(variables or {})
        self.now = now
        self.max_seconds = max_seconds
        self.max_chars = max_chars
        self._renderer: HFRenderer | None = None
        self._training: HFRenderer | None = None

    def __repr__(self) -> str:
        return f"Template({self.meta.name!r}, origin={self.meta.origin!r})"

    # ---------------------------------------------------------------------------------------------- properties
    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode("utf-8")).hexdigest()

    @property
    def context(self) -> dict[str, Any]:
        """Variables every render sees: the special tokens (like transformers' ``special_tokens_map``)."""
        ctx = dict(self.variables)
        if self.meta.bos_token is not None:
            ctx.setdefault("bos_token", self.meta.bos_token)
        if self.meta.eos_token is not None:
            ctx.setdefault("eos_token", self.meta.eos_token)
        return ctx

    @property
    def renderer(self) -> HFRenderer:
        """The compiled inference template; raises :class:`TemplateLoadError` (kind "syntax") when it can't compile."""
        if self._renderer is None:
            self._renderer = HFRenderer(self.source, variables=self.context, now=self.now,
                                        max_seconds=self.max_seconds, max_chars=self.max_chars)
        return self._renderer

    @property
    def training_renderer(self) -> HFRenderer:
        if self.training_source is None:
            raise TemplateRenderError(f"template {self.meta.name!r} has no {{% generation %}} markers", "no-markers")
        if self._training is None:
            self._training = (self.renderer if self.training_source == self.source else
                              HFRenderer(self.training_source, variables=self.context, now=self.now,
                                         max_seconds=self.max_seconds, max_chars=self.max_chars))
        return self._training

    # ------------------------------------------------------------------------------------------------ rendering
    def render(self, messages: list[dict], *, add_generation_prompt: bool = False, tools=None, **extra) -> str:
        """Render like ``tokenizer.apply_chat_template(messages, tokenize=False, ...)``."""
        return self.renderer.render(messages, add_generation_prompt=add_generation_prompt, tools=tools, **extra)

    def render_full(self, messages: list[dict], *, add_generation_prompt: bool = False, tools=None,
                    **extra) -> Rendering:
        return self.renderer.render_full(messages, add_generation_prompt=add_generation_prompt, tools=tools, **extra)

    def render_with_mask(self, messages: list[dict], *, add_generation_prompt: bool = False, tools=None,
                         **extra) -> tuple[str, list[tuple[int, int]]]:
        """The text and the ``{% generation %}`` spans (character offsets) of the training variant.

        Raises :class:`TemplateRenderError` with kind ``"no-markers"`` when the template has no training variant
        (``meta.has_generation_markers`` is False). The text equals :meth:`render`'s for built-ins (tested).
        """
        return self.training_renderer.render_with_spans(messages, add_generation_prompt=add_generation_prompt,
                                                        tools=tools, **extra)

    # ----------------------------------------------------------------------------------------------- variants
    def _copy(self, **changes) -> Template:
        kw = dict(training_source=self.training_source, variables=self.variables, now=self.now,
                  max_seconds=self.max_seconds, max_chars=self.max_chars)
        meta = changes.pop("meta", self.meta)
        kw.update(changes)
        return Template(meta, self.source, **kw)

    def pinned(self, now: datetime) -> Template:
        """The same template with ``strftime_now`` reading ``now`` (reproducible renders)."""
        return self._copy(now=now)

    def with_tokens(self, *, bos_token: str | None = None, eos_token: str | None = None) -> Template:
        """The same template rendering with other special tokens (``tmplcheck render --bos-token``)."""
        meta = replace(self.meta, **{k: v for k, v in (("bos_token", bos_token), ("eos_token", eos_token))
                                     if v is not None})
        return self._copy(meta=meta)

    def with_arguments(self, **arguments: Any) -> Template:
        """The same template with extra render arguments every render gets unless it passes its own (``tools``,
        ``documents``, ``enable_thinking``...: ``--tools``/``--documents``/``--template-kwargs``)."""
        if not arguments:
            return self
        return self._copy(variables={**self.variables, **arguments})

    def with_limits(self, *, max_seconds: float | None = None, max_chars: int | None = None) -> Template:
        return self._copy(max_seconds=max_seconds or self.max_seconds, max_chars=max_chars or self.max_chars)


# --------------------------------------------------------------------------------------------------- registry
_META_FIELDS = {f.name for f in fields(TemplateMeta)}


def _read_meta(toml_path: Path) -> TemplateMeta:
    data = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    unknown = set(data) - _META_FIELDS
    if unknown:
        raise ValueError(f"{toml_path}: unknown metadata keys {sorted(unknown)}")
    name = toml_path.name[:-len(".toml")]
    for key in ("end_of_turn", "special_tokens", "notes"):
        if key in data:
            data[key] = tuple(data[key])
    has_train = (toml_path.parent / f"{name}.train.jinja").is_file()
    return TemplateMeta(name=name, builtin=True, origin="builtin", has_generation_markers=has_train,
                        **{k: v for k, v in data.items() if k != "name"})


@cache
def registry() -> dict[str, TemplateMeta]:
    """Every built-in template's metadata, by name."""
    out = {}
    for toml_path in sorted(BUILTIN_DIR.glob("*.toml")):
        meta = _read_meta(toml_path)
        out[meta.name] = meta
    return out


@cache
def _builtin_sources(name: str) -> tuple[str, str | None]:
    src = (BUILTIN_DIR / f"{name}.jinja").read_text(encoding="utf-8")
    train = BUILTIN_DIR / f"{name}.train.jinja"
    return src, train.read_text(encoding="utf-8") if train.is_file() else None


def builtin(name: str) -> Template:
    """A built-in template by registry name (``KeyError`` naming the known ones otherwise)."""
    reg = registry()
    if name not in reg:
        raise KeyError(f"no built-in template {name!r}; known: {', '.join(reg)}")
    src, train = _builtin_sources(name)
    return Template(reg[name], src, training_source=train)


def load_template(spec: str, *, tokenizer_config: dict | None = None) -> Template:
    """Load a template from a registry name, a ``.jinja`` file, a model dir, a ``tokenizer_config.json``, a GGUF
    file (``tokenizer.chat_template``) or a hub id. ``SPEC::NAME`` picks a named template (tokenizer_config list
    form, or GGUF ``tokenizer.chat_template.NAME``). ``tokenizer_config`` supplies special tokens for a bare
    template file. Raises :class:`TemplateLoadError` when nothing can be loaded.
    """
    from tmplcheck.templates.loader import load

    return load(spec, tokenizer_config=tokenizer_config)
