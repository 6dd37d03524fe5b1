"""The Python entry point: ``tmplcheck.check(data, template=..., tokenizer=..., **settings) -> Result``.

The same gate as ``tmplcheck check`` (same stages, same settings file and setting names, same findings on the same
rows) for a notebook or a training script:

    import tmplcheck
    result = tmplcheck.check(dataset, tokenizer=tokenizer)     # a datasets.Dataset and a live tokenizer
    result                                                      # a table in Jupyter, rich in a terminal
    result.raise_for_errors()

``data``: a path (JSONL, a .json list, parquet, Arrow, a ``save_to_disk`` folder), a dataset id in the local
Hugging Face cache (read offline), a list of rows, a ``datasets.Dataset``/``IterableDataset``, a pandas
DataFrame, or a ``ray.data.Dataset`` (checked by ``tmplcheck.ray_engine``). ``tokenizer``: a spec as on the command
line, or a live ``PreTrainedTokenizerBase`` (a fast one): its ``chat_template`` is the default template and its own
vocabulary tokenizes (it is saved to a temporary folder for the gate's workers; the llama.cpp token-id comparison,
which needs a GGUF vocabulary, is reported as not run). ``template``: a built-in name, a path, a hub id, or the
Jinja source itself. ``settings``: any ``tmplcheck.toml`` setting (``select``, ``ignore``, ``max_length``,
``train_on``, ``add_special_tokens``, ``for_train``, ``input_format``, ``jobs``...), plus ``config`` (a settings
file) and ``split`` (of a dataset id).

Nothing heavy is imported until ``check`` runs, and then only what the data needs (pyarrow for parquet, pandas
and datasets only when the data is theirs).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

__all__ = ["check", "Result", "CheckFailed"]


class CheckFailed(Exception):
    """``Result.raise_for_errors()``: the data has error findings (the message lists the first ones)."""

    def __init__(self, result: "Result"):
        self.result = result
        errs = [f for f in result.findings if f.severity.value == "error"]
        from tmplcheck.validator.sources import location_text

        shown = "\n".join(f"  {location_text(f)}: {f.code} {f.message}" for f in errs[:10])
        more = f"\n  … {len(errs) - 10} more" if len(errs) > 10 else ""
        s = result.summary
        super().__init__(f"tmplcheck: {s['errors']} error findings in {s['rows_with_errors']} of {s['rows']} rows "
                         f"of {result.path}\n{shown}{more}")


class Result:
    """What :func:`check` returns: ``findings`` (sorted by where they are), ``summary`` (the dict the JSON report
    carries), ``passed`` (no error finding), ``raise_for_errors()``. Shows as a table in Jupyter
    (``_repr_html_``) and in a terminal through rich (``__rich_console__``); ``report(fmt)`` gives any report the
    command line writes (text, json, jsonl, junit, sarif, github)."""

    def __init__(self, gate_result: Any, settings: Any = None):
        self.gate_result = gate_result
        self.settings = settings
        self._findings: list | None = None

    @property
    def path(self) -> str:
        return self.gate_result.path

    @property
    def findings(self) -> list:
        if self._findings is None:
            self._findings = list(self.gate_result.findings)
        return self._findings

    @property
    def summary(self) -> dict[str, Any]:
        return self.gate_result.summary

    @property
    def passed(self) -> bool:
        return self.gate_result.passed

    @property
    def errors(self) -> int:
        return self.summary["errors"]

    @property
    def exit_code(self) -> int:
        """What ``tmplcheck check`` would exit with: 0 passed, 1 error findings."""
        return self.gate_result.exit_code

    def by_code(self) -> dict[str, int]:
        return dict(self.summary["by_code"])

    def raise_for_errors(self) -> "Result":
        """Raise :class:`CheckFailed` when there is any error finding; else return the result."""
        if not self.passed:
            raise CheckFailed(self)
        return self

    def report(self, fmt: str = "text", *, max_findings: int | None = None) -> str:
        from tmplcheck.validator.report import report

        return report(fmt, [self.gate_result], max_findings=max_findings)

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "findings": [f.to_dict() for f in self.findings]}

    def _repr_html_(self) -> str:
        from tmplcheck.validator.report.notebook import result_html

        return result_html(self.gate_result)

    def __rich_console__(self, console, options):
        from tmplcheck.validator.report.text import finding_renderables, summary_renderables

        yield from finding_renderables(self.findings, max_findings=50)
        yield from summary_renderables(self.gate_result)

    def __str__(self) -> str:
        return self.report("text")

    def __repr__(self) -> str:
        s = self.summary
        return (f"<tmplcheck.Result {'PASS' if self.passed else 'FAIL'} {self.path}: {s['rows']} rows, "
                f"{s['errors']} errors, {s['warnings']} warnings, {s['infos']} infos>")


def _is_ray_dataset(data: Any) -> bool:
    return (type(data).__module__ or "").startswith("ray.data") and hasattr(data, "map_batches")


#: files of the tokenizer's own folder (``name_or_path``) that the gate reads and ``save_pretrained`` does not write:
#: the model's stop ids (K005) and the GGUF vocabulary tmplcheck converted the folder from (K010, llama.cpp's ids)
_SIDE_FILES = ("generation_config.json", "tmplcheck-tokenizer.json")


def _live_tokenizer(tokenizer: Any, stack: ExitStack) -> str:
    """A live transformers tokenizer → the folder it is saved to for this check (its tokenizer.json, config and
    chat template: what the gate, its worker processes and the template resolution read). When it was loaded from
    a local folder, that folder's generation_config.json (the model's stop ids) comes along."""
    if not hasattr(tokenizer, "save_pretrained"):
        raise TypeError(f"tokenizer must be a spec (a name, a folder, a hub id) or a transformers tokenizer, not a "
                        f"{type(tokenizer).__name__}")
    if not (getattr(tokenizer, "is_fast", False) or hasattr(tokenizer, "backend_tokenizer")):
        raise ValueError(f"{type(tokenizer).__name__} is a slow tokenizer: tmplcheck checks fast (tokenizers) ones; "
                         "load it with use_fast=True")
    d = stack.enter_context(tempfile.TemporaryDirectory(prefix="tmplcheck-tok-"))
    tokenizer.save_pretrained(d)
    if not (Path(d) / "tokenizer.json").is_file():
        raise ValueError(f"{type(tokenizer).__name__}.save_pretrained wrote no tokenizer.json: not a fast tokenizer")
    src = Path(str(getattr(tokenizer, "name_or_path", "") or ""))
    if str(src) and src.is_dir():
        import shutil

        for f in _SIDE_FILES:
            if (src / f).is_file() and not (Path(d) / f).exists():
                shutil.copyfile(src / f, Path(d) / f)
    return d


def _template_spec(template: Any, stack: ExitStack) -> str | None:
    """A template given as its Jinja source → a temporary .jinja file; a spec (name, path, hub id) as it is."""
    if template is None:
        return None
    if isinstance(template, os.PathLike):
        return os.fspath(template)
    if not isinstance(template, str):
        raise TypeError(f"template must be a name, a path, a hub id or Jinja source, not a {type(template).__name__}")
    if "{%" in template or "{{" in template:
        d = stack.enter_context(tempfile.TemporaryDirectory(prefix="tmplcheck-tmpl-"))
        p = Path(d) / "chat_template.jinja"
        p.write_text(template, encoding="utf-8")
        return str(p)
    return template


def check(data: Any, template: Any = None, tokenizer: Any = None, *, config: str | os.PathLike | None = None,
          split: str | None = "train", name: str | None = None, **settings: Any) -> Result:
    """Check ``data`` with the gate ``tmplcheck check`` runs and return a :class:`Result` (see the module).

    ``name``: what findings call an in-memory dataset (default ``<Dataset>``, ``<DataFrame>``, ``<rows>``).
    Raises ``SourceError`` (a ValueError) when the data cannot be read at all (a corrupt file, no conversation
    column, a dataset id not in the local cache), ``TemplateLoadError``/``TokenizerLoadError`` for a template or
    tokenizer that does not load, ``TypeError`` for an unknown setting.
    """
    from tmplcheck.config import Settings

    with ExitStack() as stack:
        tok_spec = tokenizer if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)) else \
            _live_tokenizer(tokenizer, stack)
        tmpl_spec = _template_spec(template, stack)
        here = os.fspath(data) if isinstance(data, (str, os.PathLike)) and Path(os.fspath(data)).exists() else None
        st = Settings.resolve(here, config, template=tmpl_spec,
                              tokenizer=os.fspath(tok_spec) if tok_spec is not None else None, **settings)
        st.render_defaults()   # a bad tools/documents/template_kwargs fails now, not mid-run
        tok_name = None if tok_spec is None or tok_spec is tokenizer else \
            (getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
        if _is_ray_dataset(data):
            from tmplcheck.ray_engine import check_ray_dataset

            got = check_ray_dataset(data, st, name=name or "<ray dataset>")
            return got if isinstance(got, Result) else Result(got, st)
        from tmplcheck.validator.gate import run_gate, run_source
        from tmplcheck.validator.sources import open_source
        from tmplcheck.validator.stages import build_stages

        source = open_source(data, display_path=name, input_format=st.input_format,
                             max_line_bytes=st.max_line_bytes, split=split)
        cfg = st.stage_config()
        if tok_name:   # reports name the live tokenizer, not its temporary folder
            cfg.extra = {**(cfg.extra or {}), "tokenizer_name": str(tok_name)}
        opts = st.gate_options(stages=build_stages(cfg))
        if not source.objects and here is not None and Path(here).is_file():
            res = run_gate(here, opts, display_path=name or here)   # a JSONL file: exactly the CLI's path
        else:
            res = run_source(source, opts)
        return Result(res, st)
