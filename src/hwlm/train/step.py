"""One optimizer step, the validation loss and a checkpoint of a :class:`~hwlm.train.run.Run`.

These three touch every rank's collectives (all ranks agree on a NaN/inf step, evaluate the same windows
round-robin, agree that rank 0 wrote the checkpoint); the loop that calls them is :mod:`hwlm.train.loop`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hwlm.errors import HwlmError
from hwlm.train import checkpoint as ckpt_io
from hwlm.train.faults import poisoned
from hwlm.train.parallel import agree, grad_sync, mean_across
from hwlm.train.run import Run
from hwlm.train.runtime import autocast, loss_sums
from hwlm.train.signals import agree_step

__all__ = ["train_step", "validation_loss", "save_step"]


def save_step(run: Run) -> None:
    """Checkpoint the current step: FSDP on every rank (DCP), otherwise rank 0 alone; all ranks agree."""
    from hwlm.model import Transformer

    state = {"tokens": run.tokens, "elapsed": run.elapsed, "train_seconds": run.train_seconds,
             "loader": run.loader.state_dict(), "precision": run.precision, "world_size": run.world.world_size,
             "nonfinite_steps": run.nonfinite.total}
    extra = {"scaler": run.scaler.state_dict()} if run.scaler is not None else {}
    if run.strategy == "fsdp":
        from hwlm.train.sharded import save_sharded

        run.last_ckpt = save_sharded(run.cfg.out, run.step, run.model, run.optimizer, state, run.run_config,
                                     run.tokenizer_file, run.cfg.keep_checkpoints, run.world,
                                     make_plain=lambda: Transformer(run.model_cfg), trainer_extra=extra)
        return
    err = None
    if run.world.is_main:
        try:
            ckpt_io.save_checkpoint(run.cfg.out, run.step, run.model, run.optimizer, state, run.run_config,
                                    run.tokenizer_file, run.cfg.keep_checkpoints, trainer_extra=extra,
                                    key=run.key if run.cfg.encrypt else None)
        except HwlmError as exc:
            err = exc
    agree(err, run.world, f"rank 0 could not write the checkpoint of step {run.step}; see its message")
    run.last_ckpt = Path(run.cfg.out) / "checkpoints" / ckpt_io._step_name(run.step)


def validation_loss(run: Run) -> float:
    """Mean val loss over ``eval_batches`` global batches (``batch_size * world_size`` windows each),
    split round-robin over the ranks, so any number of processes evaluates the same windows."""
    from hwlm.data import eval_batches

    w = run.world
    batches = list(eval_batches(run.cfg.data, "val", run.cfg.batch_size, run.model_cfg.block_size,
                                max_batches=run.cfg.eval_batches * w.world_size, key=run.key))
    mine = batches[w.rank::w.world_size]
    # FSDP must run the wrapped module on every rank (it gathers shards); DDP needs no wrapper to evaluate.
    model = run.model if run.strategy == "ddp" else run.step_model
    nats, n = loss_sums(model, mine, run.device, run.precision)
    if run.strategy == "fsdp":
        # Every rank must make the same number of forward passes (each gathers the shards): pad and discard.
        pad = -(-len(batches) // w.world_size) - len(mine)
        loss_sums(model, batches[:1] * pad, run.device, run.precision)
    total = mean_across(nats, w) * w.world_size, mean_across(float(n), w) * w.world_size
    return total[0] / max(total[1], 1)


def train_step(run: Run, lr: float) -> tuple[torch.Tensor, bool]:
    """One optimizer step over grad_accum micro-batches; returns the mean loss (a device tensor) and
    whether it was finite on every rank (if not, nothing was updated)."""
    cfg, dev_type = run.cfg, run.device.split(":")[0]
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    poison = poisoned(run.step + 1, run.world.rank)
    loss_sum = torch.zeros((), device=run.device)
    for micro in range(cfg.grad_accum):
        x, y = run.loader.next_batch()  # (B, T) int64 on the CPU
        x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
        with grad_sync(run.step_model, micro == cfg.grad_accum - 1):
            with autocast(dev_type, run.precision):
                _, loss = run.step_model(x, y, return_logits=False)  # fp32: output layer + loss fused in chunks
            if poison:
                loss = loss * float("nan")
            scaled = loss / cfg.grad_accum
            (run.scaler.scale(scaled) if run.scaler else scaled).backward()
        loss_sum += loss.detach()
    # Every rank must take the same branch, or the next collective would hang: agree on one flag.
    finite, run.stop_signal = agree_step(bool(torch.isfinite(loss_sum)), run.signals.signum, run.world)
    if not finite:
        run.optimizer.zero_grad(set_to_none=True)
        if run.scaler:
            run.scaler.update(run.scaler.get_scale() * 0.5)
        return loss_sum / cfg.grad_accum, False
    if cfg.grad_clip > 0:
        if run.scaler:
            run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    if run.scaler:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss_sum / cfg.grad_accum, True
