"""Run in its own process by tests/test_unsloth_cpu.py: our Unsloth backend's trainer, built by Unsloth's own code
for the CUDA path, stepped on the CPU.

``UNSLOTH_ALLOW_CPU=1`` (Unsloth's switch for CPU-only CI) keeps Unsloth on its CUDA code path without a GPU, but
skips the rewrite of TRL's trainers that ``import unsloth`` does on a GPU; this probe runs that rewrite for the SFT
trainer (``_patch_trl_rl_trainers_impl("sft_trainer")``), so ``trl.SFTTrainer``/``SFTConfig`` are Unsloth's generated
``UnslothSFTTrainer``/``UnslothSFTConfig`` exactly as on a GPU. The model is a plain PEFT model (Unsloth's
``FastLanguageModel`` needs CUDA kernels), on our pre-tokenised data and collator; ``build_trainer("unsloth", ...)``
is the backend's own function. Prints one JSON object.

    python tests/unsloth_cpu_probe.py MODEL_DIR BASE_LIKE_MODEL_DIR
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

os.environ["UNSLOTH_ALLOW_CPU"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(model_dir: str, base_like_dir: str) -> dict:
    from tmplcheck.trainer import backends as B

    B.import_unsloth()                      # first, as the recipe does
    from unsloth.models.rl import _patch_trl_rl_trainers_impl

    _patch_trl_rl_trainers_impl("sft_trainer")

    import datasets
    import torch
    import trl
    from transformers import AutoTokenizer

    from tmplcheck.templates import load_template
    from tmplcheck.trainer import data as D
    from tmplcheck.trainer import special as S
    from tmplcheck.validator.tokenizer import load_tokenizer

    out: dict = {"sft_trainer": trl.SFTTrainer.__name__, "sft_config": trl.SFTConfig.__name__,
                 "config_default_optim": str(getattr(trl.SFTConfig(output_dir=tempfile.mkdtemp()).optim, "value",
                                                     trl.SFTConfig(output_dir=tempfile.mkdtemp()).optim))}
    template, tok = load_template("llama-3"), load_tokenizer("llama-3")
    stops = S.stop_ids(template, tok)
    hf_tok = AutoTokenizer.from_pretrained(str(tok.hf_dir))
    hf_tok.chat_template = template.source
    pad = S.choose_pad(hf_tok, avoid_ids=set(stops) | {tok.bos_id}, avoid_tokens=set(template.meta.special_tokens))
    hf_tok.pad_token = pad.token
    pad_id = hf_tok.pad_token_id
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    convs = D.read_conversations(os.path.join(root, "fixtures", "train", "tweets.jsonl")).convs[:8]
    feats = [{"input_ids": e.ids, "labels": e.labels} for e in D.encode(convs, template, tok, max_length=256)]
    ds = datasets.Dataset.from_dict({"input_ids": [f["input_ids"] for f in feats],
                                     "labels": [f["labels"] for f in feats]})

    collated: list[tuple] = []

    class Recording(D.Collator):
        def __call__(self, features):
            b = super().__call__(features)
            collated.append((b["input_ids"].clone(), b["labels"].clone()))
            return b

    args = B.TrainArgs(max_steps=2, batch_size=4, lr=1e-3, max_length=256, seed=0)
    model = B.attach_lora(B.load_model("hf", model_dir, args), args)
    seen: list[tuple] = []

    def hook(_mod, _args, kw):
        seen.append((kw["input_ids"].clone(), None if kw.get("labels") is None else kw["labels"].clone()))

    model.get_base_model().register_forward_pre_hook(hook, with_kwargs=True)
    trainer = B.build_trainer("unsloth", model, hf_tok, ds, Recording(pad_id), args, tempfile.mkdtemp(), [])
    B.own_special_tokens(trainer.model, pad_id=pad_id, bos_id=tok.bos_id, stop_ids=stops)
    trainer.train()
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    base = trainer.model.get_base_model()
    out.update({
        "trainer": type(trainer).__name__,
        "args": type(trainer.args).__name__,
        "optim": str(getattr(trainer.args.optim, "value", trainer.args.optim)),
        "optimizer": f"{type(opt).__module__}.{type(opt).__name__}",
        "fused": bool(opt.param_groups[0].get("fused")),
        "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
        "grad_accum": trainer.args.gradient_accumulation_steps,
        "weight_decay": trainer.args.weight_decay,
        "steps": trainer.state.global_step,
        "forwards": len(seen),
        # every forward got exactly a batch our collator made: ids and labels unchanged (labels may be None only
        # where the trainer computes the loss itself, which the next key would show)
        "forwards_match_collator": [any(torch.equal(i, ci) and (lab is not None and torch.equal(lab, cl))
                                        for ci, cl in collated) for i, lab in seen],
        "config_pad": base.config.pad_token_id, "config_eos": base.config.eos_token_id,
        "generation_eos": list(base.generation_config.eos_token_id), "pad_id": pad_id, "stops": stops,
        "tokenizer_pad": hf_tok.pad_token,
    })

    # a base model's untrained chat tokens: Unsloth's trainer raises at init (ValueError); ours says what it is
    base_args = B.TrainArgs(max_steps=1, batch_size=4, max_length=256)
    base_like = B.attach_lora(B.load_model("hf", base_like_dir, base_args), base_args)
    try:
        trl.SFTTrainer(model=base_like, args=trl.SFTConfig(output_dir=tempfile.mkdtemp(), max_steps=1,
                                                          dataset_kwargs={"skip_prepare_dataset": True},
                                                          remove_unused_columns=False, report_to="none"),
                       train_dataset=ds, data_collator=D.Collator(pad_id), processing_class=hf_tok)
        out["unsloth_on_untrained"] = "no error"
    except Exception as e:  # noqa: BLE001 - recorded for the test
        out["unsloth_on_untrained"] = f"{type(e).__name__}: {str(e)[:200]}"
    try:
        B.build_trainer("unsloth", base_like, hf_tok, ds, D.Collator(pad_id), base_args, tempfile.mkdtemp(), [])
        out["ours_on_untrained"] = "no error"
    except Exception as e:  # noqa: BLE001
        out["ours_on_untrained"] = f"{type(e).__name__}: {str(e)[:300]}"
    out["compile_location"] = os.environ.get("UNSLOTH_COMPILE_LOCATION")
    return out


if __name__ == "__main__":
    res = main(sys.argv[1], sys.argv[2])
    print("PROBE " + json.dumps(res))
