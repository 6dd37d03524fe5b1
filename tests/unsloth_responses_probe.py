"""Run in its own process by tests/test_audit_pipelines.py (``import unsloth`` patches the whole process): Unsloth's
``train_on_responses_only`` (unsloth_zoo) masks a tokenized dataset, with and without ``last_response_only``; the
result is saved with ``save_to_disk`` for ``tmplcheck audit``.

usage: unsloth_responses_probe.py TOKENIZER_DIR ROWS_JSON OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import unsloth  # noqa: E402,F401  - what a notebook imports first; unsloth_zoo refuses to load without it

from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from unsloth_zoo.dataset_utils import train_on_responses_only  # noqa: E402


def main(tok_dir: str, rows_json: str, out: str) -> None:
    tok = AutoTokenizer.from_pretrained(tok_dir)
    with open(rows_json) as f:
        rows = json.load(f)
    ds = Dataset.from_list([{"input_ids": tok.apply_chat_template(m, tokenize=True, return_dict=True)["input_ids"]}
                            for m in rows])
    from transformers import DataCollatorForSeq2Seq

    from tmplcheck.integrations import AuditCallback

    tok.pad_token = "<|reserved_special_token_2|>"
    result = {}
    for name, last in (("all", False), ("last", True)):
        fn = train_on_responses_only(None, instruction_part="<|start_header_id|>user<|end_header_id|>\n\n",
                                     response_part="<|start_header_id|>assistant<|end_header_id|>\n\n",
                                     tokenizer=tok, return_function=True, last_response_only=last)
        masked = ds.map(fn, batched=True)
        masked.save_to_disk(os.path.join(out, name))
        # the callback's audit on the batch an Unsloth notebook's collator makes of the masked rows
        batch = DataCollatorForSeq2Seq(tok)([dict(r) for r in masked])
        cb = AuditCallback(batches=1)
        result[name] = sorted({f.code for f in cb.audit_batches([batch], hf_tokenizer=tok)})
    print("PROBE " + json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:4])
