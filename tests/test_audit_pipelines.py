"""Proof on real pipelines: known ways TRL / transformers training pipelines train the wrong tokens, reproduced with
the libraries' own code on a tiny Llama model with the real Llama 3 vocabulary, each caught by ``tmplcheck audit``
(on the batches the trainer's own dataloader produces, saved with ``save_to_disk``) and by ``AuditCallback`` in a
real ``trainer.train()``; a correct pipeline passes both and trains.

1. pad = eos with a collator that masks pads by id: ``tokenizer.pad_token = tokenizer.eos_token`` and
   ``transformers.DataCollatorForLanguageModeling(mlm=False)`` (``labels[labels == pad_token_id] = -100``) →
   every ``<|eot_id|>`` is masked: L006 (and the prompts are trained: L001).
2. a completion-only collator whose response template tokenizes differently in context: TRL 1.16 no longer ships
   ``DataCollatorForCompletionOnlyLM``, so the collator is the one people still copy into notebooks, written
   against transformers' ``DataCollatorForLanguageModeling``: it searches the row for
   ``tokenizer.encode("### Assistant:", add_special_tokens=False)``; inside the row the template writes
   ``"### Assistant:\\n"`` and Llama 3's BPE merges ``":\\n"`` into one token, so the template is never found and
   every label is -100: L004.
3. assistant-only loss with a template without ``{% generation %}`` markers: TRL 1.16 refuses
   ``assistant_only_loss=True`` for a template it cannot patch (ValueError, asserted); the way users then get
   there is pre-tokenizing with ``apply_chat_template(return_assistant_tokens_mask=True)`` (transformers only logs
   a warning and returns an all-zero ``assistant_masks``) and handing the dataset to ``SFTTrainer``, which builds
   the labels from ``assistant_masks``: nothing is trained, L004.
4. truncation that cuts the end-of-turn: ``SFTConfig(max_length=N)`` truncates the rows inside the last answer:
   L009.
5. correct: ``SFTTrainer`` with ``assistant_only_loss=True`` on TRL's own Llama 3 template (TRL swaps in its
   training template with generation markers) passes (exit 0; TRL pads with eos by default, but masks padding by
   position: L007 is a warning only) and trains.
"""

from __future__ import annotations

import json
import logging
from itertools import islice
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("datasets")

from click.testing import CliRunner  # noqa: E402

from tmplcheck.cli import cli  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TRL_LLAMA3 = Path(__import__("trl").__file__).parent / "chat_templates" / "llama3.jinja"
#: a plain-text template, as many notebooks write one: "### User:" / "### Assistant:" blocks, <|eot_id|> after answers
PLAIN = ("{{- bos_token }}{%- for m in messages %}{%- if m['role'] == 'user' %}{{- '### User:\\n' + m['content'] + "
         "'\\n\\n' }}{%- elif m['role'] == 'assistant' %}{{- '### Assistant:\\n' + m['content'] + eos_token + '\\n\\n' }}"
         "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '### Assistant:\\n' }}{%- endif %}")
ROWS = [
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "2+2 is 4."}],
    [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help you today?"},
     {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue, like the sky."}],
    [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}],
    [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi! Nice to meet you."}],
]


def _tokenizer_dir(d: Path, template: str) -> Path:
    """The Llama 3 vocabulary as an instruct model ships it (eos <|eot_id|>) with ``template`` as chat_template."""
    from transformers import AutoTokenizer

    from tmplcheck.validator.tokenizer import load_tokenizer

    tok = AutoTokenizer.from_pretrained(str(load_tokenizer("llama-3").hf_dir))
    tok.eos_token = "<|eot_id|>"
    tok.chat_template = template
    tok.save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from trainer.tiny import build_tiny_model

    base = tmp_path_factory.mktemp("audit-pipelines")
    llama3 = _tokenizer_dir(base / "tok-llama3", TRL_LLAMA3.read_text())
    plain = _tokenizer_dir(base / "tok-plain", PLAIN)
    model = build_tiny_model(base / "model", llama3)
    return {"base": base, "llama3": llama3, "plain": plain, "model": model}


def _hf_tok(d: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(d))


def _model(setup):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(setup["model"]))


def _sft_config(out: Path, **kw):
    from trl import SFTConfig

    return SFTConfig(output_dir=str(out), max_steps=1, per_device_train_batch_size=4, report_to=[], use_cpu=True,
                     save_strategy="no", logging_strategy="no", dataloader_num_workers=0, seed=0, **kw)


def _messages_dataset():
    from datasets import Dataset

    return Dataset.from_list([{"messages": m} for m in ROWS])


def audit_trainer(trainer, tokenizer_dir: Path, where: Path, *template: str) -> tuple[int, dict, set[str]]:
    """``tmplcheck audit`` on the first batch the trainer's own dataloader produces, saved as a dataset."""
    from datasets import Dataset

    batch = next(islice(iter(trainer.get_train_dataloader()), 1))
    cols = {k: v.tolist() for k, v in batch.items() if k in ("input_ids", "labels", "attention_mask")}
    Dataset.from_dict(cols).save_to_disk(str(where))
    args = ["audit", str(where), "--tokenizer", str(tokenizer_dir), "--format", "json"]
    if template:
        args += ["--template", template[0]]
    r = CliRunner().invoke(cli, args)
    out = json.loads(r.output[r.output.find("{"):])
    return r.exit_code, out, {f["code"] for f in out["findings"] if f["severity"] == "error"}


def train_with_callback(trainer, **kw):
    from tmplcheck.integrations import AuditCallback, AuditFailed

    cb = AuditCallback(batches=1, **kw)
    trainer.add_callback(cb)
    try:
        trainer.train()
    except AuditFailed as e:
        return e, cb
    return None, cb


# ------------------------------------------------------------------------------------------------- the pipelines
def pad_eos_trainer(setup, out: Path):
    """A notebook's causal-LM fine-tune: apply_chat_template ids, pad = eos, transformers' LM collator."""
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    tok = _hf_tok(setup["llama3"])
    tok.pad_token = tok.eos_token
    ds = _messages_dataset().map(lambda ex: dict(tok.apply_chat_template(ex["messages"], return_dict=True)),
                                 remove_columns=["messages"])
    args = TrainingArguments(output_dir=str(out), max_steps=1, per_device_train_batch_size=4, report_to=[],
                             use_cpu=True, save_strategy="no", logging_strategy="no", seed=0)
    return Trainer(model=_model(setup), args=args, train_dataset=ds, processing_class=tok,
                   data_collator=DataCollatorForLanguageModeling(tok, mlm=False))


class ResponseTemplateCollator:
    """The completion-only collator of TRL < 0.20 (``DataCollatorForCompletionOnlyLM``), as notebooks still carry
    it, on top of transformers' ``DataCollatorForLanguageModeling``: labels start after the first occurrence of
    the response template's ids; a row without it gets no labels (TRL warned and masked the row)."""

    def __init__(self, response_template: str, tokenizer):
        from transformers import DataCollatorForLanguageModeling

        self.lm = DataCollatorForLanguageModeling(tokenizer, mlm=False)
        self.ids = tokenizer.encode(response_template, add_special_tokens=False)

    def __call__(self, examples):
        batch = self.lm(examples)
        n = len(self.ids)
        for row in range(len(batch["labels"])):
            seq = batch["input_ids"][row].tolist()
            start = next((i for i in range(len(seq) - n + 1) if seq[i:i + n] == self.ids), None)
            if start is None:
                logging.getLogger(__name__).warning("response template not found: row %d is not trained", row)
                batch["labels"][row, :] = -100
            else:
                batch["labels"][row, :start + n] = -100
        return batch


def response_template_trainer(setup, out: Path):
    from transformers import Trainer, TrainingArguments

    tok = _hf_tok(setup["plain"])
    tok.pad_token = "<|reserved_special_token_2|>"   # id 128004, Llama 3.1's <|finetune_right_pad_id|>
    ds = _messages_dataset().map(lambda ex: dict(tok.apply_chat_template(ex["messages"], return_dict=True)),
                                 remove_columns=["messages"])
    args = TrainingArguments(output_dir=str(out), max_steps=1, per_device_train_batch_size=4, report_to=[],
                             use_cpu=True, save_strategy="no", logging_strategy="no", seed=0)
    return Trainer(model=_model(setup), args=args, train_dataset=ds, processing_class=tok,
                   data_collator=ResponseTemplateCollator("### Assistant:", tok))


def no_markers_trainer(setup, out: Path):
    """Pre-tokenized with transformers' assistant mask on a template without {% generation %}, into SFTTrainer."""
    from trl import SFTTrainer

    tok = _hf_tok(setup["llama3"])
    tok.chat_template = (ROOT / "templates" / "llama-3.jinja").read_text()   # no generation markers
    with pytest.raises(ValueError, match="generation"):   # TRL itself refuses assistant_only_loss here
        SFTTrainer(model=_model(setup), args=_sft_config(out, assistant_only_loss=True),
                   train_dataset=_messages_dataset(), processing_class=tok)
    ds = _messages_dataset().map(
        lambda ex: {k: v for k, v in tok.apply_chat_template(ex["messages"], return_dict=True,
                                                             return_assistant_tokens_mask=True).items()
                    if k in ("input_ids", "assistant_masks")}, remove_columns=["messages"])
    assert not any(any(m) for m in ds["assistant_masks"])   # transformers: a warning and all-zero masks
    return SFTTrainer(model=_model(setup), args=_sft_config(out, max_length=None), train_dataset=ds,
                      processing_class=tok)


def truncating_trainer(setup, out: Path):
    from trl import SFTTrainer

    return SFTTrainer(model=_model(setup), args=_sft_config(out, assistant_only_loss=True, max_length=30),
                      train_dataset=_messages_dataset(), processing_class=_hf_tok(setup["llama3"]))


def correct_trainer(setup, out: Path):
    from trl import SFTTrainer

    return SFTTrainer(model=_model(setup), args=_sft_config(out, assistant_only_loss=True),
                      train_dataset=_messages_dataset(), processing_class=_hf_tok(setup["llama3"]))


CASES = {
    # name: (trainer factory, tokenizer dir key, the error codes audit must give (exactly), the code that names it)
    "pad-eos-collator": (pad_eos_trainer, "llama3", {"L006", "L001"}, "L006"),
    "response-template-in-context": (response_template_trainer, "plain", {"L004"}, "L004"),
    "assistant-mask-without-generation-markers": (no_markers_trainer, "llama3", {"L004"}, "L004"),
    "truncated-end-of-turn": (truncating_trainer, "llama3", {"L009"}, "L009"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_failing_pipeline_fails_audit_and_callback(name, setup, tmp_path):
    factory, tok_key, codes, main = CASES[name]
    trainer = factory(setup, tmp_path / "out")
    status, out, found = audit_trainer(trainer, setup[tok_key], tmp_path / "batch")
    assert status == 1, out
    assert found == codes, out
    f = next(x for x in out["findings"] if x["code"] == main)
    assert "row" in f["data"] and f["pointer"].startswith("/labels/") or main == "L004", f
    err, cb = train_with_callback(factory(setup, tmp_path / "out2"))
    assert err is not None, cb.report()
    assert {x.code for x in err.findings if x.severity.value == "error"} == codes
    assert main in str(err)


def test_correct_pipeline_passes_audit_and_trains(setup, tmp_path):
    trainer = correct_trainer(setup, tmp_path / "out")
    status, out, found = audit_trainer(trainer, setup["llama3"], tmp_path / "batch")
    assert status == 0 and found == set(), out
    assert out["summary"]["audit"]["trained_tokens"] > 0
    trainer = correct_trainer(setup, tmp_path / "out2")
    err, cb = train_with_callback(trainer)
    assert err is None, err
    assert trainer.state.global_step == 1
    assert cb.audited_rows == len(ROWS) and cb.summary["errors"] == 0


def test_unsloth_train_on_responses_only(setup, tmp_path):
    """Unsloth's own masking (unsloth_zoo ``train_on_responses_only``, in its own process: ``import unsloth``
    patches the process): every assistant turn passes; ``last_response_only=True`` is L005 under the default
    ``--train-on all-assistant`` and passes under ``--train-on last-assistant``; the callback's audit of the batch
    ``DataCollatorForSeq2Seq`` (an Unsloth notebook's collator) makes of the masked rows says the same."""
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("unsloth") is None:
        pytest.skip("Unsloth is not installed (scripts/setup installs it)")
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps(ROWS))
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNSLOTH_")}
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "unsloth_responses_probe.py"), str(setup["llama3"]),
                        str(rows), str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    line = next((x for x in r.stdout.splitlines() if x.startswith("PROBE ")), None)
    assert r.returncode == 0 and line, r.stdout[-3000:] + r.stderr[-3000:]
    assert json.loads(line[6:]) == {"all": [], "last": ["L005"]}    # AuditCallback on the collated batch

    def audit(name: str, *extra: str):
        res = CliRunner().invoke(cli, ["audit", str(tmp_path / name), "--tokenizer", str(setup["llama3"]),
                                       "--format", "json", *extra])
        out = json.loads(res.output[res.output.find("{"):])
        return res.exit_code, {f["code"] for f in out["findings"]}, out

    status, codes, out = audit("all")
    assert status == 0 and not codes - {"L007"}, out
    status, codes, out = audit("last")
    assert status == 1 and codes == {"L005"}, out
    assert all(f["data"]["row"] == 1 for f in out["findings"])   # the one multi-turn row
    status, codes, out = audit("last", "--train-on", "last-assistant")
    assert status == 0 and not codes, out
