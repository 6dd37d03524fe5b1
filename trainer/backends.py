"""Training backends: ``unsloth`` (CUDA; FastLanguageModel + TRL's SFTTrainer) and ``hf`` (transformers + PEFT +
the same SFTTrainer; CPU or CUDA). ``auto`` picks Unsloth only when CUDA is available and Unsloth imports.

Both get the same pre-tokenised dataset (labels = the validator's verified masks) and our own collator, so neither
library builds labels, picks a pad token or enables padding-free batching on its own; whatever they change on the
model's config (pad, eos) is overwritten afterwards by ``own_special_tokens``. Both train with the same optimiser
(``OPTIM``; Unsloth's own config would pick ``adamw_8bit``) and the same gradient checkpointing choice (on with CUDA,
off on the CPU, unless set): a speed or memory comparison of the two is like for like.

``--backend unsloth`` without CUDA runs on Unsloth's own CPU backend (Unsloth 2026.10+ falls back to it when it finds
no GPU: stock transformers + PEFT + TRL with its CPU defaults); ``auto`` only picks Unsloth with CUDA.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import time
from dataclasses import dataclass, field
from typing import Any

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
#: the optimiser of both backends (fused AdamW has CUDA and, from torch 2.4, CPU kernels)
OPTIM = "adamw_torch_fused"


class BackendError(RuntimeError):
    pass


class MissingBackend(BackendError):
    """A backend's libraries are not installed; ``extra`` names the pip extra that brings them."""

    def __init__(self, message: str, extra: str = "train"):
        super().__init__(message)
        self.extra = extra


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def unsloth_importable() -> bool:
    if importlib.util.find_spec("unsloth") is None:
        return False
    try:
        importlib.import_module("unsloth")
    except Exception:  # noqa: BLE001 - Unsloth raises many kinds of errors when it cannot run here
        return False
    return True


def resolve_backend(name: str) -> str:
    """``auto`` → ``unsloth`` when CUDA and Unsloth are present, else ``hf``; explicit names are checked.
    ``unsloth`` without CUDA is accepted where Unsloth itself runs on the CPU (its CPU backend)."""
    if name == "auto":
        return "unsloth" if cuda_available() and unsloth_importable() else "hf"
    if name == "unsloth":
        if importlib.util.find_spec("unsloth") is None:
            raise MissingBackend("--backend unsloth needs Unsloth: pip install unsloth", extra="unsloth")
        unsloth = import_unsloth()
        if not cuda_available() and getattr(unsloth, "DEVICE_TYPE", None) != "cpu":
            raise BackendError("--backend unsloth needs an NVIDIA GPU with CUDA, or Unsloth's CPU backend; neither "
                               "is available here (use --backend hf, which runs on the CPU)")
        return "unsloth"
    if name == "hf":
        return "hf"
    raise BackendError(f"unknown backend {name!r} (auto, unsloth, hf)")


def unsloth_compile_dir() -> str:
    """Where Unsloth writes the trainer and model code it generates (``UNSLOTH_COMPILE_LOCATION``; Unsloth's own
    default is ``unsloth_compiled_cache/`` in the working directory, e.g. a repository's root)."""
    from tmplcheck.assets import cache_root

    return str(cache_root() / "unsloth_compiled_cache")


def import_unsloth():
    """Import Unsloth — before transformers/peft/trl whenever possible, so that its patches apply."""
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")  # no network calls from the training machine
    os.environ.setdefault("UNSLOTH_COMPILE_LOCATION", unsloth_compile_dir())
    try:
        return importlib.import_module("unsloth")
    except ImportError as e:
        raise MissingBackend(f"Unsloth could not be imported: {e}", extra="unsloth") from None


def check_train_libraries() -> None:
    """Raise ``MissingBackend`` naming the first missing library of the 'train' extra."""
    for mod in ("torch", "transformers", "peft", "trl", "datasets", "accelerate"):
        if importlib.util.find_spec(mod) is None:
            raise MissingBackend(f"training needs {mod}, which is not installed")


@dataclass
class TrainArgs:
    mode: str = "lora"            # lora | full
    lora_r: int = 16
    lora_alpha: int | None = None  # default: r
    lora_dropout: float = 0.0
    load_in_4bit: bool = False
    lr: float = 2e-4
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 4
    grad_accum: int = 1
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_length: int = 2048
    seed: int = 42
    gradient_checkpointing: bool | None = None  # default: on for CUDA, off on CPU (both backends)
    optim: str = OPTIM
    extra: dict[str, Any] = field(default_factory=dict)


def _dtype(torch):
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def use_gradient_checkpointing(args: TrainArgs) -> bool:
    if args.gradient_checkpointing is not None:
        return bool(args.gradient_checkpointing)
    return cuda_available()


def load_model(backend: str, model_path: str, args: TrainArgs, *, tokenizer_dir: str | None = None):
    """Load the base model ready for training (no adapter yet). ``tokenizer_dir``: the validated tokenizer's
    directory (Unsloth loads a tokenizer with the model; it must not look for one in a weights-only model dir)."""
    if backend == "unsloth":
        return _load_unsloth(model_path, args, tokenizer_dir=tokenizer_dir)
    return _load_hf(model_path, args)


def _load_hf(model_path: str, args: TrainArgs):
    import torch
    from transformers import AutoModelForCausalLM

    kw: dict[str, Any] = {"dtype": _dtype(torch)}
    if args.load_in_4bit:
        if not torch.cuda.is_available():
            raise BackendError("--load-in-4bit needs CUDA (bitsandbytes)")
        from transformers import BitsAndBytesConfig

        kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                       bnb_4bit_compute_dtype=kw["dtype"])
    if torch.cuda.is_available():
        # one GPU per process: a distributed run's process trains on the GPU of its local rank (torchrun's LOCAL_RANK)
        kw["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
        kw["attn_implementation"] = "sdpa"
    return AutoModelForCausalLM.from_pretrained(model_path, **kw)


def attach_lora(model, args: TrainArgs, *, save_embeddings: bool = False):
    """PEFT LoRA on every projection (hf backend)."""
    from peft import LoraConfig, get_peft_model

    if args.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=use_gradient_checkpointing(args))
    cfg = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha or args.lora_r, lora_dropout=args.lora_dropout,
                     target_modules=LORA_TARGETS, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def _load_unsloth(model_path: str, args: TrainArgs, *, tokenizer_dir: str | None = None):
    unsloth = import_unsloth()
    kw: dict[str, Any] = {"tokenizer_name": tokenizer_dir} if tokenizer_dir else {}
    model, _their_tokenizer = unsloth.FastLanguageModel.from_pretrained(
        model_name=model_path,
        # never above the model's max_position_embeddings (the recipe refuses that): Unsloth would rescale RoPE
        max_seq_length=args.max_length,
        dtype=None,
        load_in_4bit=args.load_in_4bit,
        full_finetuning=args.mode == "full",
        # this model, as named: no swap to an ``unsloth/...`` (pre-quantised) repo, no name-mapper lookup online
        use_exact_model_name=True,
        use_gradient_checkpointing="unsloth" if use_gradient_checkpointing(args) else False,
        **kw,
    )
    # their tokenizer is discarded: Unsloth "fixes" pad/BOS on it; ours is the validated one
    return model


def attach_lora_unsloth(model, args: TrainArgs):
    unsloth = import_unsloth()
    return unsloth.FastLanguageModel.get_peft_model(
        model, r=args.lora_r, lora_alpha=args.lora_alpha or args.lora_r, lora_dropout=args.lora_dropout,
        target_modules=LORA_TARGETS, bias="none",
        use_gradient_checkpointing="unsloth" if use_gradient_checkpointing(args) else False, random_state=args.seed)


def merge_16bit(base_path: str, adapter_dir: str, out_dir: str, *, vocab_size: int | None = None):
    """The LoRA adapter in ``adapter_dir`` merged into the base model loaded afresh in 16 bits (bf16 with CUDA,
    float32 on the CPU), saved to ``out_dir``: what Unsloth's ``save_pretrained_merged(save_method="merged_16bit")``
    does. Merging into a 4-bit base would round the merged weights to 4 bits (or fail); merging outside the
    training process's (possibly Unsloth-patched) model keeps the result plain transformers weights."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
    if vocab_size and base.get_input_embeddings().weight.shape[0] != vocab_size:
        base.resize_token_embeddings(vocab_size)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir)
    return merged


def own_special_tokens(model, *, pad_id: int, bos_id: int | None, stop_ids: list[int]) -> None:
    """Set pad/eos/bos on the model config and generation config, overriding what the libraries chose."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for m in {id(model): model, id(base): base}.values():
        cfg = m.config.get_text_config() if hasattr(m.config, "get_text_config") else m.config
        cfg.pad_token_id = pad_id
        cfg.eos_token_id = stop_ids[0] if len(stop_ids) == 1 else list(stop_ids)
        if bos_id is not None:
            cfg.bos_token_id = bos_id
        gen = getattr(m, "generation_config", None)
        if gen is not None:
            gen.pad_token_id = pad_id
            gen.eos_token_id = list(stop_ids)
            if bos_id is not None:
                gen.bos_token_id = bos_id


def make_callback(on_step, on_log):
    """A TrainerCallback recording step times and loss, and driving the progress display."""
    from transformers import TrainerCallback

    class _CB(TrainerCallback):
        def __init__(self):
            self.t0 = None
            self.step_times: list[float] = []

        def on_train_begin(self, args, state, control, **kw):
            on_step(0, state.max_steps)

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if self.t0 is not None:
                self.step_times.append(time.perf_counter() - self.t0)
            on_step(state.global_step, state.max_steps)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                on_log(state.global_step, float(logs["loss"]))

    return _CB()


def build_trainer(backend: str, model, hf_tok, train_ds, collator, args: TrainArgs, work_dir: str, callbacks):
    """TRL's SFTTrainer over our tokenised dataset and collator (no dataset preparation, no packing by TRL)."""
    import torch

    if backend == "unsloth":
        import_unsloth()  # already imported first; keeps the order when called on its own
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    gc = use_gradient_checkpointing(args)
    bf16 = cuda and torch.cuda.is_bf16_supported()
    conf = SFTConfig(
        output_dir=work_dir,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps if args.max_steps else -1,
        learning_rate=args.lr,
        lr_scheduler_type="linear",
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        data_seed=args.seed,
        bf16=bf16,
        fp16=cuda and not bf16,
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
        packing=False,
        padding_free=False,
        max_length=None,
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=not cuda,
        # the same optimiser on both backends (Unsloth's SFTConfig defaults to adamw_8bit)
        optim=args.optim,
        # always explicit: TRL's default is True (also on the CPU), Unsloth's too. Under Unsloth the choice was
        # also made at load time ("unsloth" checkpointing, see _load_unsloth); the flag here must agree with it
        gradient_checkpointing=gc,
        **({"gradient_checkpointing_kwargs": {"use_reentrant": False}} if gc and backend == "hf" else {}),
        **args.extra,
    )
    if backend == "hf" and not cuda and not trl_loss_runs_on_cpu():
        SFTTrainer = _with_model_loss(SFTTrainer)
    try:
        trainer = SFTTrainer(model=model, args=conf, train_dataset=train_ds, data_collator=collator,
                             processing_class=hf_tok, callbacks=callbacks)
    except ValueError as e:
        if "ntrained tokens" not in str(e):
            raise
        # Unsloth's trainer runs fix_untrained_tokens at init and raises for zero embedding rows it cannot fix
        # (LoRA: embeddings frozen). The recipe checks this first (special.untrained_token_ids); this is the net.
        raise BackendError("Unsloth refused to train: the model has untrained (all-zero) embedding rows for "
                           f"tokens in the data (a base model's chat tokens?). Unsloth said: {e}") from None
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cb in (PrinterCallback, ProgressCallback):  # our own display replaces them
        trainer.remove_callback(cb)
    return trainer


def trl_loss_runs_on_cpu() -> bool:
    """Whether TRL's SFT loss (a fused, chunked LM head) can run on the CPU. TRL 1.x computes it with a Triton
    kernel; from 1.16 it falls back to torch off CUDA/XPU, before that it fails there (no Triton driver, or no Triton
    at all)."""
    try:
        from trl.trainer import utils as tu
    except ImportError:
        return True
    if not hasattr(tu, "_ChunkedLogProbFunction"):
        return True          # a TRL without the fused head computes the model's own loss
    if tu._ChunkedLogProbFunction is None:
        return False
    import sys

    kernels = sys.modules.get("trl.kernels.chunked_logprob")
    return kernels is not None and hasattr(kernels, "_use_triton")


def _with_model_loss(trainer_cls):
    """``trainer_cls`` with the loss the model computes itself from the labels (the mean over the non-masked labels,
    the same quantity TRL's fused head computes), for a TRL whose fused loss cannot run on the CPU."""
    from transformers import Trainer

    class SFTTrainerModelLoss(trainer_cls):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return SFTTrainerModelLoss


def peak_memory(start_rss: int | None = None) -> tuple[int, str]:
    """Peak memory of the training: CUDA max allocated bytes, else the process's peak resident set size."""
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated()), "cuda_max_allocated"
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "cpu_peak_rss"


def reset_peak_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def is_oom(e: BaseException) -> bool:
    import torch

    if isinstance(e, getattr(torch.cuda, "OutOfMemoryError", ())):
        return True
    return isinstance(e, (RuntimeError, MemoryError)) and ("out of memory" in str(e).lower()
                                                           or isinstance(e, MemoryError))
