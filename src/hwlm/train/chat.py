"""Chat fine-tuning: ``train_chat(cfg, task) -> ChatTrainResult`` (``hwlm train --task chat --init-from RUN``).

``cfg.data`` is a JSON Lines file, one conversation per line (``{"messages": [{"role", "content"}, ...]}``).
Each conversation is rendered with the shared template (:mod:`hwlm.data.chat`) and tokenized with the
pretrained run's tokenizer; the loss is the next-token cross-entropy on the assistant's tokens only
(every other target is -1, which the model's loss ignores), the end-of-text token after the last answer
included so the model learns to stop. Full fine-tuning, or LoRA adapters (``--lora-rank r``, peft) on
the attention and MLP projections.

The output is an ordinary language-model run folder: ``config.json`` has the ``model`` section and the
checkpoints hold plain Transformer weights (adapters merged), so ``hwlm generate``, ``hwlm eval``,
``hwlm export`` and ``hwlm serve`` load it as they load any run. With LoRA the adapters themselves
also ride in ``trainer_state.pt``, so ``--resume auto`` continues training them exactly.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from hwlm.config import to_dict
from hwlm.crypt import load_key
from hwlm.data.chat import check_messages, training_segments
from hwlm.data.normalize import normalize
from hwlm.data.readers import json_lines
from hwlm.errors import ConfigError, DataError
from hwlm.io import atomic_write_json, folder_lock
from hwlm.train import checkpoint as ckpt_io
from hwlm.train.classify import Examples
from hwlm.train.classify_load import LORA_TARGETS
from hwlm.train.config import TrainConfig
from hwlm.train.logs import RunLogger, info
from hwlm.train.optim import build_optimizer, lr_at
from hwlm.train.runtime import seed_everything
from hwlm.train.task_config import TaskConfig

__all__ = ["ChatTrainResult", "train_chat", "encode_conversation", "read_conversations"]


@dataclass
class ChatTrainResult:
    """What a chat fine-tune did; losses are per assistant token."""

    steps: int
    seconds: float
    train_loss: float | None
    val_loss: float | None
    first_val_loss: float | None
    conversations: int
    run_dir: Path
    last_checkpoint: Path | None
    params: int
    trained_params: int


def read_conversations(path: Path) -> list[list[dict[str, str]]]:
    """Every conversation of a JSON Lines file, checked."""
    if path is None or not Path(path).is_file():
        raise DataError(f"--task chat reads --data as a JSON Lines file of conversations; {path} is not a file")
    out = []
    for i, row in json_lines(path):
        out.append(check_messages(row.get("messages") if isinstance(row, dict) else None, f"{path}:{i}"))
    if len(out) < 2:
        raise DataError(f"{path} holds {len(out)} conversation(s); chat fine-tuning needs at least 2 (one held out)")
    return out


def encode_conversation(tok: Any, messages: list[dict[str, str]], eot_id: int, max_len: int,
                        form: str = "nfkc", strip_control: bool = True) -> tuple[list[int], list[int]]:
    """``(inputs, targets)``: targets are the next token where the assistant wrote it, else -1."""
    tok.encode_special_tokens = True
    ids: list[int] = []
    learn: list[bool] = []
    for text, by_assistant in training_segments(messages):
        piece = tok.encode(normalize(text, form, strip_control), add_special_tokens=False).ids
        ids += piece
        learn += [by_assistant] * len(piece)
    ids.append(eot_id)
    learn.append(True)  # the end-of-text after the last answer: learn to stop
    inputs = ids[:-1][:max_len]
    targets = [ids[t + 1] if learn[t + 1] else -1 for t in range(len(ids) - 1)][:max_len]
    return inputs, targets


def _batch(rows: list[tuple[list[int], list[int]]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(x) for x, _ in rows)
    x = torch.full((len(rows), width), pad, dtype=torch.int64)
    y = torch.full((len(rows), width), -1, dtype=torch.int64)
    for i, (a, b) in enumerate(rows):
        x[i, :len(a)], y[i, :len(b)] = torch.tensor(a), torch.tensor(b)
    return x, y


@torch.no_grad()
def _val_loss(model: torch.nn.Module, rows: list[tuple[list[int], list[int]]], pad: int, device: str) -> float:
    model.eval()
    nats, n = 0.0, 0
    for i in range(0, len(rows), 16):
        x, y = _batch(rows[i:i + 16], pad)
        _, loss = model(x.to(device), y.to(device))
        count = int((y != -1).sum())
        nats, n = nats + float(loss) * count, n + count
    model.train()
    return nats / max(n, 1)


def _model(task: TaskConfig, device: str, say: Callable[[str], None],
           key: bytes | None = None) -> tuple[Any, torch.nn.Module]:
    from hwlm.train.load import load_model

    if task.init_from is None:
        raise ConfigError("--task chat fine-tunes a pretrained run: pass --init-from RUN (made by hwlm train)")
    loaded = load_model(task.init_from, device, key)
    model = loaded.model.train()
    if task.lora_rank:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise ConfigError("--lora-rank needs peft: pip install 'hwlm[classify]'") from None
        model = get_peft_model(model, LoraConfig(r=task.lora_rank, lora_alpha=task.lora_alpha, lora_dropout=0.0,
                                                 target_modules=LORA_TARGETS))
    say(f"fine-tuning {loaded.path}" + (f" with LoRA rank {task.lora_rank}" if task.lora_rank else " (all weights)"))
    return loaded, model


def _plain(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).merge_and_unload() if hasattr(model, "merge_and_unload") else model


def _adapters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}


def _restore(ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, lora: bool,
             device: str, key: bytes | None = None) -> dict[str, Any]:
    key = ckpt_io.checkpoint_key(ckpt, key)  # an encrypted checkpoint: the key is checked before any file is read
    ckpt_io.verify_checkpoint(ckpt, key)
    trainer = ckpt_io.load_torch_file(ckpt / "trainer_state.pt", key, "cpu")
    if lora:
        missing = model.load_state_dict(trainer["lora"], strict=False).unexpected_keys
        if missing:
            raise ConfigError(f"checkpoint {ckpt} holds other adapters ({missing[0]}, ...): use the same --lora-rank")
    else:
        ckpt_io.load_weights(ckpt, model, device, key)
    optimizer.load_state_dict(ckpt_io.load_torch_file(ckpt / "optimizer.pt", key, device))
    ckpt_io.restore_rng(trainer["rng"])
    return ckpt_io.read_json(ckpt / "state.json")


def train_chat(cfg: TrainConfig, task: TaskConfig, *, say: Callable[[str], None] | None = None,
               stop_at_step: int | None = None) -> ChatTrainResult:
    """Fine-tune ``task.init_from`` on the conversations in ``cfg.data``, writing the run ``cfg.out``."""
    with folder_lock(cfg.out, what="hwlm train"):  # one writer per run folder
        return _train_chat(cfg, task, say, stop_at_step)


def _train_chat(cfg: TrainConfig, task: TaskConfig, say: Callable[[str], None] | None,
                stop_at_step: int | None) -> ChatTrainResult:
    from hwlm.device import select_device

    say = say or info
    convs = read_conversations(cfg.data)
    device = select_device(cfg.device).device
    seed_everything(cfg.seed)
    key = load_key(cfg.key_file) if cfg.key_file is not None or cfg.encrypt else None  # never logged or saved
    loaded, model = _model(task, device, say, key)
    prep = (loaded.run_config or {}).get("data", {}).get("prepare", {})
    if loaded.eot_id is None:
        raise ConfigError(f"{task.init_from} names no end-of-text token; fine-tune a run made by hwlm train")
    rows = [encode_conversation(loaded.tokenizer, m, loaded.eot_id, loaded.model_cfg.block_size,
                                prep.get("normalize", "nfkc"), prep.get("strip_control", True)) for m in convs]
    val_idx = set(range(1, len(rows), 10))  # every tenth conversation is held out (at least one)
    train_rows = [r for i, r in enumerate(rows) if i not in val_idx]
    val_rows = [r for i, r in enumerate(rows) if i in val_idx]
    optimizer, opt_text = build_optimizer(model, cfg, device.split(":")[0])
    loader = Examples(len(train_rows), cfg.batch_size, cfg.seed)
    total = cfg.max_steps or max(1, int(task.epochs * len(train_rows) / cfg.batch_size))
    run_config = {"version": 1, "task": "chat", "train": to_dict(cfg), "task_config": to_dict(task),
                  "model": to_dict(loaded.model_cfg), "data": {**(loaded.run_config or {}).get("data", {}),
                                                               "conversations": str(Path(cfg.data).resolve())},
                  "runtime": {"device": device, "optimizer": opt_text, "init_from": str(loaded.path),
                              "params": sum(p.numel() for p in model.parameters())}}
    step, elapsed, first_val, last_ckpt = 0, 0.0, None, None
    resume = ckpt_io.resume_checkpoint(cfg.out, cfg.resume, say, key)
    if resume is not None:
        state = _restore(resume, model, optimizer, bool(task.lora_rank), device, key)
        step, elapsed, first_val, last_ckpt = int(state["step"]), float(state["elapsed"]), state.get("first_val"), resume
        loader.load_state_dict(state["loader"])
    if first_val is None:
        first_val = _val_loss(model, val_rows, loaded.eot_id, device)
    atomic_write_json(cfg.out / "config.json", run_config)
    logger = RunLogger(cfg.out, step if resume is not None else None, cfg.tensorboard)
    losses, val, train_loss = [], first_val, None
    try:
        while step < total and not (cfg.time_budget and elapsed >= cfg.time_budget) and step != stop_at_step:
            t0 = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg, step / total, total)
            x, y = _batch([train_rows[i] for i in loader.next_indices()], loaded.eot_id)
            _, loss = model(x.to(device), y.to(device))
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            losses.append(float(loss.detach()))
            elapsed += time.perf_counter() - t0
            end = step >= total or bool(cfg.time_budget and elapsed >= cfg.time_budget) or step == stop_at_step
            record: dict[str, Any] = {}
            if step % cfg.log_interval == 0 or end:
                train_loss, losses = sum(losses) / len(losses), []
                record = {"step": step, "loss": train_loss}
            if (cfg.eval_interval and step % cfg.eval_interval == 0) or end:
                val = _val_loss(model, val_rows, loaded.eot_id, device)
                record = (record or {"step": step}) | {"val_loss": val}
            if record:
                logger.log(record)
            if (cfg.ckpt_interval and step % cfg.ckpt_interval == 0) or end:
                state = {"tokens": 0, "elapsed": elapsed, "train_seconds": elapsed, "loader": loader.state_dict(),
                         "first_val": first_val}
                extra = {"lora": _adapters(model)} if task.lora_rank else {}
                last_ckpt = ckpt_io.save_checkpoint(cfg.out, step, _plain(model), optimizer, state, run_config,
                                                    loaded.path / "tokenizer.json", cfg.keep_checkpoints,
                                                    trainer_extra=extra, key=key if cfg.encrypt else None)
    finally:
        logger.close()
    return ChatTrainResult(steps=step, seconds=elapsed, train_loss=train_loss, val_loss=val, first_val_loss=first_val,
                           conversations=len(rows), run_dir=cfg.out, last_checkpoint=last_ckpt,
                           params=run_config["runtime"]["params"],
                           trained_params=sum(p.numel() for p in model.parameters() if p.requires_grad))
