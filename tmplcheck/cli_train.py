"""``tmplcheck train``: fine-tune on an approved dataset (Unsloth on CUDA, transformers+PEFT anywhere).

Exit codes: 0 trained; 2 refused (no matching approval stamp, the gate failed on --revalidate), bad input, missing
'train' extra, out of memory, interrupted.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tmplcheck.config import check_options, resolve_or_exit

FORCE_WARNING = (
    "--force: training on data the gate has NOT approved. The template/token checks were skipped; a broken "
    "template trains a broken model. run.json records forced=true and the report shows it.")
LOSS_ALL_WARNING = (
    "--loss-on all: every token is a label (system prompt, role headers, control tokens), not only the verified "
    "assistant masks. This is the naive pipeline, kept to reproduce what a wrong template does to it; not for real "
    "runs. run.json records loss_on=all.")


def _fail(message: str, details: list[str] | None = None) -> None:
    click.echo(f"tmplcheck train: {message}", err=True)
    for d in details or []:
        click.echo(f"  - {d}", err=True)
    sys.exit(2)


class _Display:
    """A rich progress bar on a terminal; plain lines otherwise (CI logs)."""

    def __init__(self):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.tty = self.console.is_terminal
        self.progress = None
        self.task = None
        self.last_loss: float | None = None
        self.every = 0

    def info(self, s: str) -> None:
        self.console.print(f"[dim]{s}[/dim]" if self.tty else s, highlight=False, markup=self.tty)

    def warn(self, s: str) -> None:
        self.console.print(f"[yellow]warning:[/yellow] {s}" if self.tty else f"warning: {s}", highlight=False,
                           markup=self.tty)

    def loss(self, step: int, loss: float) -> None:
        self.last_loss = loss

    def step(self, step: int, total: int) -> None:
        if self.tty:
            if self.progress is None:
                from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                           TimeRemainingColumn)

                self.progress = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                                         TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(),
                                         TimeRemainingColumn(), console=self.console, transient=False)
                self.progress.start()
                self.task = self.progress.add_task("train", total=total, loss="-")
            loss = f"{self.last_loss:.4f}" if self.last_loss is not None else "-"
            self.progress.update(self.task, completed=step, total=total, loss=loss)
        else:
            self.every = self.every or max(1, total // 10)
            if step and (step % self.every == 0 or step == total):
                loss = f"{self.last_loss:.4f}" if self.last_loss is not None else "-"
                self.console.print(f"step {step}/{total} loss {loss}", highlight=False, markup=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


@click.command("train")
@click.argument("data", type=click.Path(dir_okay=False))
@click.option("--model", "-m", required=True, help="Base model: a local directory or a hub id (org/name).")
@click.option("--template", "-t", help="The template the dataset was approved with (default: the settings file's).")
@click.option("--tokenizer", "-k", help="Tokenizer (default: the settings file's, else the one in the approval "
                                        "stamp, else the template's).")
@click.option("--output", "-o", type=click.Path(file_okay=False), help="Run directory (default runs/DATA-TIME).")
@click.option("--epochs", type=float, default=1.0, show_default=True, help="Training epochs.")
@click.option("--max-steps", type=int, help="Stop after N optimiser steps (overrides --epochs).")
@click.option("--lr", type=float, help="Learning rate (default 2e-4 LoRA, 2e-5 full).")
@click.option("--lora-r", type=int, default=16, show_default=True, help="LoRA rank.")
@click.option("--lora-alpha", type=int, help="LoRA alpha (default: the rank).")
@click.option("--mode", type=click.Choice(["lora", "full"]), default="lora", show_default=True,
              help="LoRA adapter or full fine-tune.")
@click.option("--load-in-4bit", is_flag=True, help="QLoRA: load the base model in 4 bits (CUDA).")
@click.option("--packing", is_flag=True, help="Concatenate rows into blocks of --max-length tokens.")
@click.option("--max-length", type=int, help="Tokens per sequence (default: the settings file's, else the approved "
                                              "one, else 2048).")
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--grad-accum", type=int, default=1, show_default=True, help="Gradient accumulation steps.")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--backend", type=click.Choice(["auto", "unsloth", "hf"]), default="auto", show_default=True,
              help="auto: Unsloth when CUDA and Unsloth are present, else transformers+PEFT. Unsloth trains on one "
                   "GPU only (one process); --nproc above 1 uses hf.")
@click.option("--nproc", type=int, default=1, show_default=True,
              help="Training processes (hf backend, DDP via torchrun: gloo on the CPU, one process per GPU with "
                   "CUDA). --batch-size stays the global batch, split evenly; the stamp is checked once and rank 0 "
                   "writes the run directory.")
@click.option("--eval-split", type=float, default=0.1, show_default=True,
              help="Share of rows held out for the artifact report (eval.jsonl).")
@click.option("--revalidate", is_flag=True, help="Run the gate first and stamp the dataset when it passes.")
@click.option("--force", is_flag=True, help="Skip the gate (recorded as forced=true in run.json). Not for real runs.")
@click.option("--merge", is_flag=True, help="Also save the LoRA adapter merged into the base model (merged/).")
@click.option("--input-format", type=click.Choice(["sharegpt", "openai", "alpaca"]), help="Force the row format.")
@click.option("--loss-on", type=click.Choice(["assistant", "all"]), default="assistant", show_default=True,
              help="assistant: loss on the verified assistant masks; all: on every token (the naive pipeline, "
                   "for reproducing failures; recorded in run.json).")
@check_options(max_length=False, for_train=False, template_args=True, train_on=True)
def train_cmd(data, model, template, tokenizer, output, epochs, max_steps, lr, lora_r, lora_alpha, mode,
              load_in_4bit, packing, max_length, batch_size, grad_accum, seed, backend, nproc, eval_split, revalidate,
              force, merge, input_format, loss_on, config_path, select, ignore, add_special, tools, documents,
              template_kwargs, train_on):
    """Fine-tune MODEL on DATA, which `tmplcheck check --approve` must have approved for TEMPLATE.

    The check settings (--config, --select, --ignore, --max-length, --add-special-tokens, template, tokenizer)
    are read exactly as `tmplcheck check` reads them, from the same settings file, so the approval stamp's
    configuration is recomputed without repeating flags.
    """
    import importlib.util

    st = resolve_or_exit(data, config_path, template=template, tokenizer=tokenizer, max_length=max_length,
                         select=select, ignore=ignore, add_special_tokens=add_special, input_format=input_format,
                         tools=tools, documents=documents, template_kwargs=template_kwargs, train_on=train_on)
    if not st.template:
        raise click.UsageError("--template is required (or template in tmplcheck.toml / [tool.tmplcheck])")
    template, tokenizer, max_length, input_format = st.template, st.tokenizer, st.max_length, st.input_format

    missing = [m for m in ("torch", "transformers", "peft", "trl", "datasets", "accelerate")
               if importlib.util.find_spec(m) is None]
    if missing:
        _fail(f"training needs the 'train' extra ({', '.join(missing)} not installed): "
              "pip install 'tmplcheck[train]'")
    if revalidate and force:
        _fail("--revalidate and --force contradict each other: pick one")
    from tmplcheck.trainer.backends import BackendError, MissingBackend
    from tmplcheck.trainer.recipe import Hooks, Refused, TrainConfig, TrainError, run_training

    from rich.panel import Panel

    disp = _Display()
    if force:
        disp.console.print(Panel(FORCE_WARNING, title="WARNING", style="bold red"))
    if loss_on == "all":
        disp.console.print(Panel(LOSS_ALL_WARNING, title="WARNING", style="bold red"))
    try:
        cfg = TrainConfig(data=Path(data), model=model, template=template, tokenizer=tokenizer,
                          output=Path(output) if output else None, mode=mode, backend=backend, epochs=epochs,
                          max_steps=max_steps, lr=lr, lora_r=lora_r, lora_alpha=lora_alpha,
                          load_in_4bit=load_in_4bit, packing=packing, max_length=max_length, batch_size=batch_size,
                          grad_accum=grad_accum, seed=seed, eval_split=eval_split, revalidate=revalidate,
                          force=force, merge=merge, input_format=input_format,
                          loss_on=loss_on, settings=st, nproc=nproc)
        hooks = Hooks(info=disp.info, warn=disp.warn, progress=disp.step, loss=disp.loss)
        try:
            if nproc > 1:
                from tmplcheck.trainer.ddp import launch

                res = launch(cfg, hooks)
            else:
                res = run_training(cfg, hooks)
        finally:
            disp.close()
    except Refused as e:
        _fail(str(e), e.reasons)
    except MissingBackend as e:
        _fail(f"{e} (pip install 'tmplcheck[{e.extra}]')")
    except (TrainError, BackendError) as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _fail("interrupted: nothing was written")
    m = res.metrics
    click.echo(f"trained {m['steps']} steps, {m['train_tokens']:,} tokens at {m['tokens_per_s']:,.0f} tokens/s, "
               f"final loss {m['loss'][-1]['loss']:.4f}" if m["loss"] else f"trained {m['steps']} steps", err=True)
    if force:
        disp.console.print(Panel(FORCE_WARNING, title="WARNING: forced run", style="bold red"))
    if loss_on == "all":
        disp.console.print(Panel(LOSS_ALL_WARNING, title="WARNING: loss on every token", style="bold red"))
    click.echo(str(res.run_dir))


COMMANDS = [train_cmd]
