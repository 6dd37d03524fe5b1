"""Trainer integrations: :class:`AuditCallback` audits the batches a ``transformers.Trainer`` (TRL's
``SFTTrainer``, Unsloth's trainers) really feeds the model, before the first step.

    from tmplcheck.integrations import AuditCallback
    trainer = SFTTrainer(model=..., args=..., train_dataset=..., processing_class=tokenizer,
                         callbacks=[AuditCallback(template="llama-3")])
    trainer.train()     # raises AuditFailed with the findings when the first batches train the wrong tokens

At ``on_train_begin`` it draws the first ``batches`` batches from the trainer's own train dataloader (the
collator's output: ``input_ids``, ``labels``, ``attention_mask``, ``position_ids``), runs the same audit as
``tmplcheck audit`` (L codes) and, when any finding is an error, raises :class:`AuditFailed`, which stops
``trainer.train()`` before any optimizer step. Warnings are printed and training goes on. The batches are drawn
from a fresh iterator over the dataloader, so the training loop's own iteration is not consumed.
"""

from __future__ import annotations

import sys
from typing import Any

try:
    from transformers import TrainerCallback
except ImportError as _e:  # pragma: no cover - the 'train' extra
    raise ImportError("tmplcheck.integrations needs transformers (pip install 'tmplcheck[train]')") from _e


class AuditFailed(RuntimeError):
    """The audited batches train the wrong tokens; ``.findings`` holds the findings, the message their text."""

    def __init__(self, message: str, findings: list):
        super().__init__(message)
        self.findings = findings


def _tokenizer_from(obj: Any):
    """A tmplcheck Tokenizer from a spec (name / path / hub id), a tmplcheck Tokenizer, or a transformers fast
    tokenizer (or a processor holding one)."""
    from tmplcheck.validator.tokenizer import Tokenizer, load_tokenizer

    if isinstance(obj, Tokenizer):
        return obj
    if isinstance(obj, str):
        return load_tokenizer(obj)
    hf = getattr(obj, "tokenizer", obj)
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(f"AuditCallback needs a fast tokenizer (or tokenizer=SPEC), got {type(obj).__name__}")
    config = {k: getattr(hf, k, None) for k in ("bos_token", "eos_token", "pad_token")}
    config = {k: str(v) for k, v in config.items() if v is not None}
    return Tokenizer(backend, name=getattr(hf, "name_or_path", "") or "tokenizer", config=config)


def _template_from(spec: Any, hf_tokenizer: Any, tok):
    from tmplcheck.templates import load_template

    if spec is not None and not isinstance(spec, str):
        return spec   # a Template already
    if spec:
        return load_template(spec)
    src = getattr(getattr(hf_tokenizer, "tokenizer", hf_tokenizer), "chat_template", None)
    if isinstance(src, dict):
        src = src.get("default")
    if not src:
        raise ValueError("AuditCallback: pass template=... (the tokenizer has no chat_template)")
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp(prefix="tmplcheck-audit-"))
    (d / "chat_template.jinja").write_text(src)
    cfg = {k: v for k, v in tok.config.items() if k in ("bos_token", "eos_token", "pad_token")}
    return load_template(str(d / "chat_template.jinja"), tokenizer_config=cfg)


class AuditCallback(TrainerCallback):
    """Audit the first ``batches`` training batches at train start; raise :class:`AuditFailed` on errors.

    ``template``: a spec for ``load_template`` (name, .jinja, model dir) or a Template; default: the trainer's
    tokenizer's chat_template. ``tokenizer``: a spec, a tmplcheck Tokenizer or a transformers tokenizer; default:
    the trainer's ``processing_class``. ``train_on``: ``all-assistant`` or ``last-assistant``. ``raise_on_error``:
    False records the findings (``.findings``, ``.summary``), prints them and sets ``control.should_training_stop``
    instead of raising; transformers looks at that flag only after a step, so one step runs.
    """

    def __init__(self, template: Any = None, tokenizer: Any = None, *, batches: int = 2,
                 train_on: str = "all-assistant", pad_id: int | None = None, raise_on_error: bool = True,
                 max_shown: int = 20, stream=None):
        from tmplcheck.validator.training_flags import valid_train_on

        self.template, self.tokenizer = template, tokenizer
        self.batches = max(1, int(batches))
        self.train_on = valid_train_on(train_on)
        self.pad_id = pad_id
        self.raise_on_error = raise_on_error
        self.max_shown = max_shown
        self.stream = stream
        self.findings: list = []
        self.summary: dict = {}
        self.audited_rows = 0

    def audit_batches(self, batches, hf_tokenizer=None) -> list:
        """Audit an iterable of collated batches (dicts of tensors or lists); the findings."""
        from tmplcheck.validator.tokenized_audit import audit_rows, batch_rows, build_structure

        tok = _tokenizer_from(self.tokenizer if self.tokenizer is not None else hf_tokenizer)
        tmpl = _template_from(self.template, hf_tokenizer if hf_tokenizer is not None else self.tokenizer, tok)
        st = build_structure(tmpl, tok, pad_id=self.pad_id)

        def rows():
            offset = 0
            for b, batch in enumerate(batches):
                if b >= self.batches:
                    break
                for r in batch_rows(batch, offset=offset):
                    offset += 1
                    yield r

        self.findings, self.summary = audit_rows(rows(), st, path="batch", train_on=self.train_on)
        self.audited_rows = self.summary.get("rows", 0)
        return self.findings

    def report(self) -> str:
        head = (f"tmplcheck AuditCallback: {self.audited_rows} rows of the first {self.batches} batch(es): "
                f"{self.summary.get('errors', 0)} errors, {self.summary.get('warnings', 0)} warnings "
                f"({self.summary.get('audit', {}).get('headline', '')})")
        lines = [head]
        for f in self.findings[: self.max_shown]:
            lines.append(f"  {f.code} [{f.severity.value}] {f.pointer} {f.message}")
        if len(self.findings) > self.max_shown:
            lines.append(f"  … {len(self.findings) - self.max_shown} more")
        return "\n".join(lines)

    def on_train_begin(self, args, state, control, **kwargs):
        dl = kwargs.get("train_dataloader")
        if dl is None:
            raise RuntimeError("AuditCallback: the trainer passed no train_dataloader to on_train_begin")
        hf_tok = kwargs.get("processing_class") or kwargs.get("tokenizer")
        self.audit_batches(iter(dl), hf_tok)
        text = self.report()
        print(text, file=self.stream or sys.stderr)
        if self.summary.get("errors", 0):
            if self.raise_on_error:
                raise AuditFailed(text, self.findings)
            control.should_training_stop = True
        return control
