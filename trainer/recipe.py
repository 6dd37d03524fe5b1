"""The training recipe, top to bottom: approve → load → encode → train → save, one readable function.

``run_training(TrainConfig)`` refuses unapproved data (``Refused``), otherwise trains and writes the run directory
(layout in docs/ARCHITECTURE.md and ``trainer/__init__.py``) atomically: everything is written into
``RUN_DIR.tmp-<pid>`` and renamed at the end, so an interrupted or failed run leaves nothing half-written.
"""

from __future__ import annotations

import dataclasses
import itertools

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tmplcheck import __version__


class TrainError(RuntimeError):
    """A clear, user-facing reason the run cannot go on (bad input, out of memory, interrupted...)."""


class Refused(TrainError):
    """The dataset is not approved for this template/tokenizer/configuration; ``reasons`` say which part."""

    def __init__(self, message: str, reasons: list[str]):
        super().__init__(message)
        self.reasons = reasons


@dataclass
class TrainConfig:
    data: Path
    model: str
    template: str
    tokenizer: str | None = None
    output: Path | None = None
    mode: str = "lora"
    backend: str = "auto"
    epochs: float = 1.0
    max_steps: int | None = None
    lr: float | None = None            # default: 2e-4 for LoRA, 2e-5 for full
    lora_r: int = 16
    lora_alpha: int | None = None
    load_in_4bit: bool = False
    packing: bool = False
    max_length: int | None = None      # default: the approved one, else 2048
    batch_size: int = 4
    grad_accum: int = 1
    seed: int = 42
    eval_split: float = 0.1
    revalidate: bool = False
    force: bool = False
    merge: bool = False
    input_format: str | None = None
    loss_on: str = "assistant"         # "assistant": the verified masks; "all": every token (the naive pipeline)
    settings: Any = None               # tmplcheck.config.Settings: the check settings (select/ignore/...) to verify
    nproc: int = 1                     # training processes (DDP, trainer/ddp.py); batch_size is the global batch

    def __post_init__(self):
        self.data = Path(self.data)
        if self.output is not None:
            self.output = Path(self.output)
        if self.mode not in ("lora", "full"):
            raise TrainError(f"--mode must be lora or full, not {self.mode!r}")
        if self.load_in_4bit and self.mode == "full":
            raise TrainError("--load-in-4bit is for LoRA (QLoRA); a full fine-tune needs 16-bit weights")
        if self.loss_on not in ("assistant", "all"):
            raise TrainError(f"--loss-on must be assistant or all, not {self.loss_on!r}")
        if self.nproc < 1:
            raise TrainError(f"--nproc must be 1 or more, not {self.nproc}")
        if self.batch_size % self.nproc:
            raise TrainError(f"--batch-size {self.batch_size} is the global batch, split evenly over the --nproc "
                             f"{self.nproc} processes: make it a multiple of {self.nproc}")


@dataclass
class Hooks:
    """What the caller sees while it runs: messages, warnings, a progress display."""

    info: Callable[[str], None] = lambda s: None
    warn: Callable[[str], None] = lambda s: None
    progress: Callable[[int, int], None] = lambda step, total: None
    loss: Callable[[int, float], None] = lambda step, loss: None


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    run_config: dict[str, Any]
    forced: bool = False
    notes: list[str] = field(default_factory=list)


DEFAULT_MAX_LENGTH = 2048


def default_output(data: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{data.stem}-{stamp}"


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(spec: str) -> bool:
    return bool(_HUB_ID.match(spec)) and ".." not in spec


def check_model_spec(model: str) -> str:
    """A local model dir must exist and hold a config.json; anything else must look like a hub id (org/name)."""
    p = Path(model).expanduser()
    if p.exists():
        if not p.is_dir() or not (p / "config.json").is_file():
            raise TrainError(f"--model {model}: not a model directory (no config.json in it)")
        return str(p.resolve())
    if not looks_like_hub_id(model):
        raise TrainError(f"--model {model}: no such directory (and not a hub id of the form org/name)")
    return model


# ----------------------------------------------------------------------------------------------------------- approve
def _default_tokenizer(template_spec: str) -> str | None:
    from tmplcheck.templates import load_template

    try:
        return load_template(template_spec).meta.default_tokenizer
    except Exception:  # noqa: BLE001 - a bad template spec is reported where it is loaded
        return None


def approve(cfg: TrainConfig, hooks: Hooks) -> tuple[dict[str, Any] | None, str | None, int | None, bool]:
    """The gate in front of training. Returns (stamp, tokenizer spec, approved max_length, revalidated).

    - default: the stamp next to the dataset must match bytes, template, tokenizer, configuration and version;
    - ``--revalidate``: run the gate now, and write a fresh stamp when it passes;
    - ``--force``: skip the gate; the run records forced=true (the caller prints the loud warning).
    """
    from tmplcheck.validator.approval import read_stamp, stamp_path, verify_stamp, write_stamps

    if cfg.force:
        return None, cfg.tokenizer, cfg.max_length, False
    try:
        old = read_stamp(cfg.data)
    except Exception:  # noqa: BLE001 - an unreadable stamp is simply not a match
        old = None
    tok_spec = cfg.tokenizer or ((old or {}).get("tokenizer") or {}).get("spec") or _default_tokenizer(cfg.template)
    old_settings = ((old or {}).get("config") or {}).get("settings", {})
    max_length = cfg.max_length if cfg.max_length is not None else old_settings.get("max_length")
    # the same check settings `check` stamps (tmplcheck/config.py); this run writes the stop set itself, so an
    # approval made with or without --for-train fits it (--revalidate checks with it)
    from tmplcheck.config import Settings

    base = cfg.settings or Settings()
    settings = dataclasses.replace(base, template=cfg.template, tokenizer=tok_spec, max_length=max_length,
                                   for_train=True if cfg.revalidate else bool(old_settings.get("for_train")))
    stage_cfg = settings.stage_config()
    if cfg.revalidate:
        from tmplcheck.validator.gate import run_gate
        from tmplcheck.validator.stages import build_stages

        hooks.info(f"revalidating {cfg.data} with template {cfg.template}"
                   + (f" and tokenizer {tok_spec}" if tok_spec else ""))
        opts = settings.gate_options(stages=build_stages(stage_cfg))
        opts.input_format = cfg.input_format or opts.input_format
        result = run_gate(cfg.data, opts, display_path=str(cfg.data))
        if not result.passed:
            worst = list(itertools.islice((f for f in result.findings if f.severity.value == "error"), 5))
            lines = [f"{f.path}:{f.line}: {f.code} {f.message}" for f in worst]
            raise Refused(f"{cfg.data}: the gate found {result.errors} error(s); not training on it "
                          "(`tmplcheck check` shows them all)", lines)
        path = write_stamps(result, stage_cfg)
        hooks.info(f"approved: {path}")
        return read_stamp(cfg.data), tok_spec, max_length, True
    mismatches = verify_stamp(cfg.data, cfg.template, tok_spec, stage_cfg)
    if mismatches:
        parts = sorted({m.split(":", 1)[0] for m in mismatches})
        what = ("no approval stamp" if parts == ["stamp"]
                else f"the approval stamp does not match ({', '.join(p for p in parts if p != 'stamp')} changed)")
        raise Refused(f"{cfg.data}: {what}: not training on it. Run `tmplcheck check {cfg.data} --template "
                      f"{cfg.template}{' --tokenizer ' + tok_spec if tok_spec else ''}"
                      f"{' --max-length ' + str(max_length) if max_length else ''} --approve`, or pass "
                      f"--revalidate", mismatches)
    hooks.info(f"approved by {stamp_path(cfg.data)}")
    return read_stamp(cfg.data), tok_spec, max_length, False


# ------------------------------------------------------------------------------------------------------ run directory
def _stale_tmp_dirs(out: Path) -> None:
    """Remove ``OUT.tmp-<pid>`` directories of runs whose process is gone (killed without clean-up)."""
    for d in out.parent.glob(out.name + ".tmp-*"):
        try:
            pid = int(d.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass


def _json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def write_generation_config(model_dir: Path, *, stop_ids: list[int], pad_id: int, bos_id: int | None) -> None:
    """Write (over whatever a library saved) the generation config with the trainer's stop ids, and check it."""
    from transformers import GenerationConfig

    p = model_dir / "generation_config.json"
    base = json.loads(p.read_text()) if p.is_file() else {}
    base.update({"eos_token_id": list(stop_ids), "pad_token_id": pad_id})
    if bos_id is not None:
        base["bos_token_id"] = bos_id
    base.pop("_from_model_config", None)
    gen = GenerationConfig.from_dict(base)
    gen.save_pretrained(str(model_dir))
    back = json.loads(p.read_text())
    if back.get("eos_token_id") != list(stop_ids) or back.get("pad_token_id") != pad_id:
        raise TrainError(f"{p}: saved generation config does not carry the stop ids {stop_ids} "
                         f"(read back {back.get('eos_token_id')})")


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "peft", "trl", "unsloth", "tokenizers"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


# ------------------------------------------------------------------------------------------------------------- train
def precheck(cfg: TrainConfig) -> tuple[str, Path]:
    """What is refused before anything loads: missing libraries, model, data, a used run directory. Returns the
    model path and the run directory."""
    from tmplcheck.trainer import backends as B

    B.check_train_libraries()
    model_path = check_model_spec(cfg.model)
    if not cfg.data.is_file():
        raise TrainError(f"{cfg.data}: no such file")
    out = cfg.output or default_output(cfg.data)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TrainError(f"--output {out}: already exists and is not empty; choose another run directory")
    return model_path, out


def run_training(cfg: TrainConfig, hooks: Hooks | None = None, *, approved: tuple | None = None,
                 launcher_pid: int | None = None) -> RunResult | None:
    """Train and write the run directory. In a process of a distributed run (``trainer/ddp.py``: ``RANK`` and
    ``WORLD_SIZE`` set by torchrun) ``approved`` is what the launcher's :func:`approve` returned (the stamp is
    checked once, there), every process trains its share of each batch, and only rank 0 writes the run directory
    (``RUN_DIR.tmp-<launcher_pid>``, renamed at the end) and returns the result; the other ranks return None."""
    hooks = hooks or Hooks()
    from tmplcheck.trainer import backends as B

    rank, world = dist_rank_world()
    model_path, out = precheck(cfg)
    # Unsloth must be imported before transformers: resolve (and import) the backend before anything else loads.
    backend = B.resolve_backend(cfg.backend)
    if world > 1 and backend != "hf":
        raise TrainError(f"the {backend} backend trains in one process (one GPU); several processes need --backend hf")
    if cfg.batch_size % world:
        raise TrainError(f"--batch-size {cfg.batch_size} cannot be split over {world} processes")
    hooks.info(f"backend: {backend}" + (f", {world} processes (DDP)" if world > 1 else ""))

    stamp, tok_spec, max_length, revalidated = approved if approved is not None else approve(cfg, hooks)

    from tmplcheck.templates import load_template
    from tmplcheck.trainer import data as D
    from tmplcheck.trainer import special as S
    from tmplcheck.validator.tokenizer import load_tokenizer

    template = load_template(cfg.template)
    tok_spec = tok_spec or template.meta.default_tokenizer or model_path
    tok = load_tokenizer(tok_spec)
    if tok.hf_dir is None:
        raise TrainError(f"tokenizer {tok_spec!r} has no HF tokenizer directory to train with; pass --tokenizer "
                         "as a model directory or tokenizer.json")
    try:
        S.template_token_ids(template, tok)
        stops = S.stop_ids(template, tok)
    except S.TokenSetupError as e:
        raise TrainError(str(e)) from None
    block = _sequence_length(max_length, model_path, hooks)

    rows = D.read_conversations(cfg.data, cfg.input_format)
    if not rows.convs:
        raise TrainError(f"{cfg.data}: no readable rows")
    if rows.unreadable:
        hooks.warn(f"{rows.unreadable} unreadable row(s) skipped")
    train_convs, eval_convs = D.split(rows.convs, cfg.eval_split, cfg.seed)
    try:
        defaults = cfg.settings.render_defaults() if getattr(cfg, "settings", None) is not None else {}
        train_on = getattr(cfg.settings, "train_on", None) if getattr(cfg, "settings", None) is not None else None
        examples = list(D.encode(train_convs, template, tok, max_length=None if cfg.packing else block,
                                 loss_on=cfg.loss_on, render_defaults=defaults, train_on=train_on))
    except S.TokenSetupError as e:
        raise TrainError(str(e)) from None
    trained_per_row = [{"line": ex.line, "tokens": len(ex.ids), "trained": ex.trained} for ex in examples]
    empty = [ex.line for ex in examples if ex.trained == 0]
    if empty:
        hooks.warn(f"{len(empty)} row(s) have no trained token (e.g. line {empty[0]}); they teach nothing")
    examples = [ex for ex in examples if ex.trained]
    if not examples:
        raise TrainError("no row has a trained token: nothing to learn")
    if cfg.packing:
        features = D.pack(examples, block)
    else:
        features = [{"input_ids": ex.ids, "labels": ex.labels} for ex in examples]

    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(str(tok.hf_dir))
    _check_same_ids(hf_tok, tok, template, train_convs[0])
    hf_tok.chat_template = template.source
    avoid = set(stops) | set(S.template_token_ids(template, tok).values())
    if tok.bos_id is not None:
        avoid.add(tok.bos_id)
    pad = S.choose_pad(hf_tok, avoid_ids=avoid, avoid_tokens=set(template.meta.special_tokens))
    if pad.added:
        hf_tok.add_special_tokens({"pad_token": pad.token})
        hooks.warn(f"pad token: {pad.reason} ({pad.token})")
    else:
        hf_tok.pad_token = pad.token
    pad_id = hf_tok.pad_token_id
    if pad_id in stops:
        raise TrainError(f"internal: pad token {pad.token} is a stop id")
    hooks.info(f"pad token: {pad.token} ({pad_id}, {pad.reason}); stop ids: {stops}")

    lr = cfg.lr if cfg.lr is not None else (2e-4 if cfg.mode == "lora" else 2e-5)
    # per process: the global batch split evenly, so that N processes take the same optimiser steps as one
    targs = B.TrainArgs(mode=cfg.mode, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, load_in_4bit=cfg.load_in_4bit,
                        lr=lr, epochs=cfg.epochs, max_steps=cfg.max_steps, batch_size=cfg.batch_size // world,
                        grad_accum=cfg.grad_accum, max_length=block, seed=cfg.seed,
                        # every trainable parameter takes part in each step (LoRA or full): no unused-parameter search
                        extra={"ddp_find_unused_parameters": False} if world > 1 else {})

    if rank == 0:
        _stale_tmp_dirs(out)
        tmp = out.parent / f"{out.name}.tmp-{launcher_pid or os.getpid()}"
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    else:   # the other ranks write nothing into the run directory; the trainer's scratch folder only
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix=f"tmplcheck-rank{rank}-"))
    try:
        result = _train_and_save(cfg, hooks, backend, model_path, hf_tok, tok, template, pad, pad_id, stops, targs,
                                 features, trained_per_row, eval_convs, rows, train_convs, stamp, tok_spec, block,
                                 revalidated, tmp, examples=examples, rank=rank, world=world)
        if rank != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            return None
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except KeyboardInterrupt:
        shutil.rmtree(tmp, ignore_errors=True)
        raise TrainError(f"interrupted: nothing was written to {out} (the partial run was removed)") from None
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, Exception) and B.is_oom(e):
            raise TrainError(f"out of memory while training ({type(e).__name__}); lower --batch-size or "
                             f"--max-length (now {cfg.batch_size} × {block}), or use --load-in-4bit") from None
        raise
    result.run_dir = out
    return result


def dist_rank_world() -> tuple[int, int]:
    """This process's rank and the number of processes (torchrun's ``RANK``/``WORLD_SIZE``; 0 and 1 alone)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _reduce_across(value: float, op: str, world: int) -> float:
    """``value`` summed (``op`` "sum") or maximised ("max") over the processes of a distributed run."""
    if world <= 1:
        return value
    import torch
    import torch.distributed as dist

    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([float(value)], dtype=torch.float64, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return float(t.item())


def _max_positions(model_path: str) -> int | None:
    """The model's ``max_position_embeddings`` (its text config's), when its config can be read here."""
    try:
        from transformers import AutoConfig

        conf = AutoConfig.from_pretrained(model_path)
    except Exception:  # noqa: BLE001 - an unreadable config is reported where the model is loaded
        return None
    conf = conf.get_text_config() if hasattr(conf, "get_text_config") else conf
    n = getattr(conf, "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def _sequence_length(max_length: int | None, model_path: str, hooks: Hooks) -> int:
    """Tokens per sequence: the given/approved ``max_length``, else the default capped at the model's context.
    More than the model's ``max_position_embeddings`` is refused: the hf backend would run positions the model
    never saw, and Unsloth would silently rescale RoPE (which ``load_run`` and every server would not)."""
    max_pos = _max_positions(model_path)
    if max_length is None:
        if max_pos is not None and max_pos < DEFAULT_MAX_LENGTH:
            hooks.info(f"max length: {max_pos} (the model's max_position_embeddings)")
            return max_pos
        return DEFAULT_MAX_LENGTH
    if max_pos is not None and max_length > max_pos:
        raise TrainError(f"--max-length {max_length} is more than the model's max_position_embeddings ({max_pos}): "
                         f"the model has no positions past {max_pos} (Unsloth would rescale RoPE for it silently, "
                         f"and nothing that loads the result would). Use --max-length {max_pos} or less (approve "
                         "the data again with it), or a model with a longer context")
    return max_length


def _check_untrained(model, cfg, hooks: Hooks, examples, stops: list[int], pad_id: int, names: Any) -> list[int]:
    """Refuse (LoRA) or fix (full: the mean row) untrained embedding rows of tokens the data uses; see
    ``trainer/embeddings.py``. Returns the ids that were reset."""
    from tmplcheck.trainer import embeddings as E

    used: set[int] = set(stops)
    for ex in examples:
        used.update(ex.ids)
    bad = E.untrained_in_use(model, used, ignore={pad_id})
    if not bad:
        return []
    where: dict[int, int] = {}
    for ex in examples:
        for i in set(ex.ids) & set(bad):
            where.setdefault(i, ex.line)
    desc = ", ".join(f"{names(i)} ({i}{', first in line ' + str(where[i]) if i in where else ', a stop id'})"
                     for i in bad)
    if cfg.mode == "lora":
        raise TrainError(
            f"{cfg.model}: the embedding rows of tokens this data trains on are all zero, never trained: {desc}. "
            f"This is a base model's untrained chat tokens; LoRA leaves embeddings frozen, so the model could not "
            f"learn to read or end a turn (Unsloth refuses it too). Train the instruct/chat variant of the model, or "
            f"--mode full (these rows are then set to the mean embedding before training, as Unsloth does)")
    E.reset_to_mean(model, bad)
    hooks.warn(f"untrained embedding rows set to the mean of the trained rows before training: {desc}")
    return bad


def _check_same_ids(hf_tok, tok, template, conv) -> None:
    """The HF tokenizer the model is trained and served with must give the ids the validator checked."""
    text = template.render(conv.dicts(), **conv.render_kw())
    ours = tok.encode(text, add_special_tokens=False).ids
    theirs = hf_tok(text, add_special_tokens=False)["input_ids"]
    if ours != theirs:
        i = next((k for k, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        raise TrainError(f"the HF tokenizer at {tok.hf_dir} encodes line {conv.line} differently from the "
                         f"validated tokenizer (first difference at token {i}); they must be the same tokenizer")


def _train_and_save(cfg, hooks, backend, model_path, hf_tok, tok, template, pad, pad_id, stops, targs, features,
                    trained_per_row, eval_convs, rows, train_convs, stamp, tok_spec, block, revalidated,
                    tmp: Path, examples=(), rank: int = 0, world: int = 1) -> RunResult | None:
    from tmplcheck.trainer import backends as B
    from tmplcheck.trainer import data as D
    from tmplcheck.validator.approval import sha256_file, sha256_text

    import datasets

    import transformers

    # the adapter's initial weights come from the seed: the same run gives the same model (in every process)
    transformers.set_seed(cfg.seed)
    hooks.info(f"loading {model_path}")
    try:
        model = B.load_model(backend, model_path, targs, tokenizer_dir=str(tok.hf_dir))
    except OSError as e:
        raise TrainError(f"--model {cfg.model}: cannot load it ({e})") from None
    emb = model.get_input_embeddings().weight.shape[0]
    needed = max(len(hf_tok), max(max(f["input_ids"]) for f in features) + 1, max(stops) + 1)
    if pad.added or needed > emb:
        if not pad.added and needed > len(hf_tok):
            raise TrainError(f"the model's vocabulary ({emb}) is smaller than the tokenizer's ids need ({needed}): "
                             "model and tokenizer do not belong together")
        model.resize_token_embeddings(len(hf_tok))
    reset = _check_untrained(model, cfg, hooks, examples, stops, pad_id, hf_tok.convert_ids_to_tokens)
    B.own_special_tokens(model, pad_id=pad_id, bos_id=tok.bos_id, stop_ids=stops)
    if cfg.mode == "lora":
        model = B.attach_lora_unsloth(model, targs) if backend == "unsloth" else B.attach_lora(model, targs)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    hooks.info(f"{cfg.mode}: {trainable:,} trainable of {total:,} parameters; {len(features)} sequences")

    collator = D.Collator(pad_id)
    ds = datasets.Dataset.from_dict({"input_ids": [f["input_ids"] for f in features],
                                     "labels": [f["labels"] for f in features]})
    losses: list[dict[str, float]] = []
    def on_loss(step: int, loss: float) -> None:
        losses.append({"step": step, "loss": loss})
        hooks.loss(step, loss)

    cb = B.make_callback(hooks.progress, on_loss)
    trainer = B.build_trainer(backend, model, hf_tok, ds, collator, targs, str(tmp / "checkpoints"), [cb])
    # whatever Unsloth/TRL changed while wrapping the model, the special tokens are ours again
    B.own_special_tokens(trainer.model, pad_id=pad_id, bos_id=tok.bos_id, stop_ids=stops)
    hf_tok.pad_token = hf_tok.convert_ids_to_tokens(pad_id)
    B.reset_peak_memory()
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    peak, peak_kind = B.peak_memory()
    # every process's tokens (each collates its share of a batch), the largest peak and the slowest clock
    tokens = int(_reduce_across(collator.tokens_in(trainer.state.global_step * cfg.grad_accum), "sum", world))
    peak = int(_reduce_across(peak, "max", world))
    train_s = _reduce_across(train_s, "max", world)
    model = trainer.model
    B.own_special_tokens(model, pad_id=pad_id, bos_id=tok.bos_id, stop_ids=stops)
    shutil.rmtree(tmp / "checkpoints", ignore_errors=True)
    if rank != 0:
        return None

    # ---- save
    (tmp / "model").mkdir()
    save_kw = {"save_embedding_layers": True} if (cfg.mode == "lora" and pad.added) else {}
    model.save_pretrained(str(tmp / "model"), **save_kw)
    write_generation_config(tmp / "model", stop_ids=stops, pad_id=pad_id, bos_id=tok.bos_id)
    hf_tok.save_pretrained(str(tmp / "tokenizer"))
    _check_saved_tokenizer(tmp / "tokenizer", template.source, pad_id)
    merged = False
    if cfg.merge:
        if cfg.mode == "lora" and (cfg.load_in_4bit or backend == "unsloth"):
            # never into a 4-bit base, nor into Unsloth's patched model: the base reloaded in 16 bits + the adapter
            hooks.info("merging the adapter into the base weights, reloaded in 16 bits")
            B.merge_16bit(model_path, str(tmp / "model"), str(tmp / "merged"), vocab_size=_vocab_size(model))
            hf_tok.save_pretrained(str(tmp / "merged"))
            write_generation_config(tmp / "merged", stop_ids=stops, pad_id=pad_id, bos_id=tok.bos_id)
            merged = True
        elif cfg.mode == "lora" and hasattr(model, "merge_and_unload"):
            hooks.info("merging the adapter into the base weights")
            m = model.merge_and_unload()
            m.save_pretrained(str(tmp / "merged"))
            hf_tok.save_pretrained(str(tmp / "merged"))
            write_generation_config(tmp / "merged", stop_ids=stops, pad_id=pad_id, bos_id=tok.bos_id)
            merged = True
        else:
            hooks.warn("--merge: a full fine-tune is already a whole model (model/); nothing to merge")
    n_eval = D.write_eval(tmp / "eval.jsonl", cfg.data, eval_convs)
    if stamp is not None:
        _json(tmp / "approval.json", stamp)

    step_times = cb.step_times
    steady = step_times[len(step_times) // 10:] or step_times
    metrics = {
        "loss": losses,
        "tokens_per_s": tokens / train_s if train_s > 0 else 0.0,
        "peak_memory_bytes": peak,
        "peak_memory_kind": peak_kind,
        "train_tokens": tokens,
        "train_seconds": train_s,
        "steps": trainer.state.global_step,
        "step_seconds": step_times,
        "median_step_seconds": sorted(steady)[len(steady) // 2] if steady else None,
        "trained_tokens_per_row": trained_per_row,
        "trained_tokens": sum(r["trained"] for r in trained_per_row),
        "processes": world,
    }
    _json(tmp / "metrics.json", metrics)
    run_config = {
        "tmplcheck_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": {"path": str(cfg.data.resolve()), "sha256": sha256_file(cfg.data)},
        "model": cfg.model,
        "base_model": model_path,
        "template": {"spec": cfg.template, "name": template.meta.name, "sha256": sha256_text(template.source),
                     "source": template.source},
        "tokenizer": {"spec": tok_spec, "name": tok.name, "hf_dir": str(tok.hf_dir)},
        "backend": backend,
        "mode": cfg.mode,
        "packing": cfg.packing,
        "loss_on": cfg.loss_on,
        "forced": cfg.force,
        "revalidated": revalidated,
        "approval": None if stamp is None else "approval.json",
        "stop_ids": stops,
        "stop_tokens": [hf_tok.convert_ids_to_tokens(i) for i in stops],
        "pad_token": hf_tok.convert_ids_to_tokens(pad_id),
        "pad_token_id": pad_id,
        "pad_token_added": pad.added,
        "bos_token_id": tok.bos_id,
        "vocab_size": _vocab_size(model),
        "untrained_tokens_reset": reset,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "max_steps": cfg.max_steps,
        "lr": targs.lr,
        "batch_size": cfg.batch_size,
        "processes": world,
        "per_process_batch_size": cfg.batch_size // world,
        "grad_accum": cfg.grad_accum,
        "max_length": block,
        "lora": ({"r": targs.lora_r, "alpha": targs.lora_alpha or targs.lora_r, "dropout": targs.lora_dropout,
                  "target_modules": B.LORA_TARGETS, "load_in_4bit": targs.load_in_4bit}
                 if cfg.mode == "lora" else None),
        "merged": merged,
        "eval_split": cfg.eval_split,
        "rows": {"read": len(rows.convs), "unreadable": rows.unreadable, "train": len(train_convs),
                 "eval": n_eval, "sequences": len(features)},
        "versions": _versions(),
    }
    _json(tmp / "run.json", run_config)
    return RunResult(tmp, metrics, run_config, forced=cfg.force)


def _vocab_size(model) -> int:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return int(base.get_input_embeddings().weight.shape[0])


def _check_saved_tokenizer(path: Path, chat_template: str, pad_id: int) -> None:
    from transformers import AutoTokenizer

    back = AutoTokenizer.from_pretrained(str(path))
    if back.chat_template != chat_template:
        raise TrainError(f"{path}: the saved tokenizer does not carry the validated chat template")
    if back.pad_token_id != pad_id:
        raise TrainError(f"{path}: the saved tokenizer's pad token is {back.pad_token_id}, not {pad_id}")


__all__ = ["TrainConfig", "TrainError", "Refused", "Hooks", "RunResult", "run_training", "approve",
           "check_model_spec", "write_generation_config", "precheck", "dist_rank_world"]
