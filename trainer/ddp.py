"""``tmplcheck train --nproc N``: the hf backend on N processes (PyTorch DDP through the HF Trainer).

The launcher (this process) does what must happen once: the refusals (:func:`recipe.precheck`), the approval stamp
check (or ``--revalidate``'s gate run) and the choice of the run directory. It then starts N processes with
``torchrun`` (``python -m torch.distributed.run --standalone --nproc_per_node N``), each running :func:`main` on the
same pickled configuration and approval (a hand-off folder only this run knows). The HF Trainer sees torchrun's
``RANK``/``WORLD_SIZE`` and trains with DDP: gloo on the CPU, nccl with CUDA (one process per GPU, each on the GPU of
its ``LOCAL_RANK``). ``--batch-size`` stays the global batch (each process takes ``batch_size / N`` rows of it), so
the optimiser steps see the same rows as one process's. Only rank 0 writes the run directory (atomically, as one
process does) and hands its result back; the launcher then returns it as a one-process run would.

The Unsloth backend trains on one GPU only: ``--nproc`` above 1 needs ``--backend hf`` (``auto`` picks it).
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tmplcheck.trainer.recipe import Hooks, RunResult, TrainConfig, TrainError, approve, precheck

_JOB = "job.pickle"
_RESULT = "result.pickle"


def launch(cfg: TrainConfig, hooks: Hooks | None = None, nproc: int | None = None) -> RunResult:
    """Check the stamp once, train on ``nproc`` processes, return rank 0's result."""
    import dataclasses

    from tmplcheck.trainer import backends as B
    from tmplcheck.validator.approval import sha256_file

    hooks = hooks or Hooks()
    nproc = nproc or cfg.nproc
    if cfg.backend == "unsloth":
        raise TrainError("the Unsloth backend trains on one GPU: --nproc above 1 needs --backend hf")
    cuda = B.cuda_available()
    if cuda:
        import torch

        have = torch.cuda.device_count()
        if nproc > have:
            raise TrainError(f"--nproc {nproc}: one process per GPU, and this machine has {have}")
    model_path, out = precheck(cfg)
    cfg = dataclasses.replace(cfg, backend="hf", output=out, nproc=nproc)
    hooks.info(f"backend: hf, {nproc} processes (DDP, {'nccl' if cuda else 'gloo'})")
    approval = approve(cfg, hooks)                     # the stamp, checked once, here
    handoff = Path(tempfile.mkdtemp(prefix="tmplcheck-ddp-"))
    try:
        with open(handoff / _JOB, "wb") as fh:
            pickle.dump({"cfg": cfg, "approval": approval, "launcher_pid": os.getpid(),
                         "data_sha256": sha256_file(cfg.data)}, fh)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "tmplcheck.trainer.ddp", str(handoff)]
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        try:
            proc.wait()
        except KeyboardInterrupt:
            # torchrun got the interrupt too: let it stop its processes (rank 0 removes its partial run directory)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait()
            raise
        errors = sorted(handoff.glob("error-rank*.txt"))
        if errors:
            raise TrainError(errors[0].read_text(encoding="utf-8").strip())
        if proc.returncode != 0 or not (handoff / _RESULT).is_file():
            raise TrainError(f"the {nproc} training processes failed (torchrun exit {proc.returncode}); their "
                             f"messages are above. Nothing was written to {out}")
        with open(handoff / _RESULT, "rb") as fh:
            return pickle.load(fh)
    finally:
        shutil.rmtree(handoff, ignore_errors=True)


def _display_hooks() -> Hooks:
    from tmplcheck.cli_train import _Display

    disp = _Display()
    return Hooks(info=disp.info, warn=disp.warn, progress=disp.step, loss=disp.loss)


def main(argv: list[str] | None = None) -> int:
    """One process of the run (started by torchrun): train its share; rank 0 writes the run directory."""
    from tmplcheck.trainer.backends import BackendError
    from tmplcheck.trainer.recipe import dist_rank_world, run_training
    from tmplcheck.validator.approval import sha256_file

    argv = sys.argv[1:] if argv is None else argv
    handoff = Path(argv[0])
    rank, _world = dist_rank_world()
    with open(handoff / _JOB, "rb") as fh:
        job = pickle.load(fh)
    cfg: TrainConfig = job["cfg"]
    try:
        if sha256_file(cfg.data) != job["data_sha256"]:
            raise TrainError(f"{cfg.data} changed after its approval stamp was checked; not training on it")
        res = run_training(cfg, _display_hooks() if rank == 0 else Hooks(), approved=job["approval"],
                           launcher_pid=job["launcher_pid"])
    except (TrainError, BackendError) as e:
        (handoff / f"error-rank{rank}.txt").write_text(str(e), encoding="utf-8")
        return 2
    if rank == 0 and res is not None:
        with open(handoff / _RESULT, "wb") as fh:
            pickle.dump(res, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
