"""Classifier training: ``train_classifier(cfg, task, model_overrides) -> ClassifyTrainResult``.

The same :class:`~hwlm.train.config.TrainConfig` as a language model (batch, AdamW and its warm-up +
cosine schedule from :mod:`hwlm.train.optim`, gradient clipping, horizon by steps / tokens / seconds,
``log.jsonl`` + TensorBoard through :class:`~hwlm.train.logs.RunLogger`, atomic checkpoints with
``COMPLETE`` last, ``--resume auto`` restoring weights, optimizer, every RNG and the batch position)
with a classification step: cross-entropy of the class logits, weighted per class with
``--class-weights balanced``. Per step:

    ids, mask, y <- the next B examples of a seeded per-epoch permutation, padded on the right
    logits = model(ids, mask)                        # (B, K)
    loss = cross_entropy(logits, y, weight)          # backward, clip, AdamW step
    every eval_interval and at the end: val loss, accuracy and macro-F1 (what hwlm tune prunes on)

One process only (a classifier of this size gains nothing from DDP on these machines). The loop is
its own small function rather than a hook into :mod:`hwlm.train.loop`, whose step is built around
token windows; everything else (optimizer, schedule, logger, checkpoint format) is shared.
"""

from __future__ import annotations

import dataclasses
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from hwlm.config import to_dict
from hwlm.device import select_device
from hwlm.errors import ConfigError, DataError
from hwlm.io import atomic_write_json, folder_lock
from hwlm.train import checkpoint as ckpt_io
from hwlm.train.classify_load import SEEDS_FILE, build_for_spec, classifier_spec, lm_trunk
from hwlm.train.config import TrainConfig
from hwlm.train.logs import RunLogger, info
from hwlm.train.metrics import classification_report
from hwlm.train.optim import lr_at
from hwlm.train.sparse_optim import SparseDenseAdam, build_sparse_optimizer
from hwlm.train.progress import Progress
from hwlm.train.runtime import autocast, seed_everything
from hwlm.train.task_config import TaskConfig

__all__ = ["ClassifyTrainResult", "train_classifier", "Examples", "encode_texts", "encode_rows", "collate",
           "predict_batches", "SparseDenseAdam"]

RUN_CONFIG_VERSION = 1


@dataclass
class ClassifyTrainResult:
    """What a classification run did (for --seeds K: the mean of the sub-runs, ``seed_runs`` listing each)."""

    steps: int
    examples: int
    tokens: int
    seconds: float
    tokens_per_s: float
    mfu: float | None
    train_loss: float | None
    val_loss: float | None
    val_accuracy: float | None
    val_macro_f1: float | None
    run_dir: Path
    last_checkpoint: Path | None
    params: int
    device: str
    peak_memory_bytes: int | None
    seed_runs: list[dict[str, Any]] | None = None


def encode_texts(tokenizer: Any, texts: list[str], max_len: int) -> list[list[int]]:
    """Token ids of each text, cut to its first ``max_len`` tokens (specials in text stay plain text)."""
    tokenizer.encode_special_tokens = True
    return [e.ids[:max_len] for e in tokenizer.encode_batch(texts, add_special_tokens=False)]


def encode_rows(tokenizer: Any, texts: list[str], spec: dict[str, Any]) -> list[list[int]]:
    """A text model's input rows: token ids cut to ``max_len``; the bag of words' features of them
    (:func:`hwlm.model.classifier.bow_features`); for wide & deep both, one after the other
    (:func:`hwlm.model.classifier.wide_deep_row`)."""
    ids = encode_texts(tokenizer, texts, spec["max_len"])
    if spec["kind"] not in ("bow", "wide-deep"):
        return ids
    from hwlm.model.classifier import bow_features, wide_deep_row

    if spec["kind"] == "bow":
        return [bow_features(row, text, spec["vocab_size"], spec["buckets"], spec["ngrams"],
                             spec.get("features", "tokens")) for row, text in zip(ids, texts)]
    w = spec["wide"]
    return [wide_deep_row(row, bow_features(row, text, w["vocab_size"], w["buckets"], w["ngrams"], w["features"]),
                          spec["vocab_size"]) for row, text in zip(ids, texts)]


def collate(rows: list[Any], pad_id: int, features: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A batch: features (B, F) float and no mask, or ids (B, T) right-padded with ``pad_id`` and mask (B, T)."""
    if features:
        return torch.tensor(rows, dtype=torch.float32), None
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.int64)
        mask[i, :len(r)] = True
    return ids, mask


class Examples:
    """Batches of B example indices from a permutation seeded by ``(seed, epoch)``; its position is its state.

    With ``lengths`` and ``pool`` > 0 each epoch's order is bucketed (as torchtext's BucketIterator and fairseq
    batch): the permutation is cut into pools of ``pool`` batches, each pool sorted by length and cut into
    batches, and the batches shuffled; a batch then pads to a length near its own rows' (the benchmark's
    reviews padded 2-3x their real tokens in random batches). Still a function of ``(seed, epoch)``, so resume
    stays exact."""

    def __init__(self, n: int, batch_size: int, seed: int, lengths: list[int] | None = None, pool: int = 0) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.lengths = np.asarray(lengths) if lengths is not None and pool > 0 else None
        self.pool = pool
        self.epoch, self.pos = 0, 0
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, its order), computed once an epoch

    def _perm(self) -> np.ndarray:
        if self._order is not None and self._order[0] == self.epoch:
            return self._order[1]
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.n)
        if self.lengths is not None:
            size = self.batch_size * self.pool
            pools = [p[np.argsort(self.lengths[p], kind="stable")] for p in np.split(order, range(size, self.n, size))]
            batches = [b for p in pools for b in np.split(p, range(self.batch_size, len(p), self.batch_size))]
            order = np.concatenate([batches[i] for i in rng.permutation(len(batches))])
        self._order = (self.epoch, order)
        return order

    def next_indices(self) -> list[int]:
        out: list[int] = []
        while len(out) < self.batch_size:
            take = self._perm()[self.pos:self.pos + self.batch_size - len(out)]
            out += take.tolist()
            self.pos += len(take)
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


@torch.no_grad()
def predict_batches(model: torch.nn.Module, rows: list[Any], pad_id: int, features: bool, device: str,
                    batch_size: int = 256, on_batch: Callable[[int], None] | None = None) -> torch.Tensor:
    """Class probabilities (N, K) of ``rows`` (token-id lists or feature rows), in order."""
    was_training = model.training
    model.eval()
    # Text rows go through in order of length, so a batch pads to about its own rows' length; put back after.
    order = list(range(len(rows))) if features else sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out = []
    for i in range(0, len(rows), batch_size):
        x, mask = collate([rows[j] for j in order[i:i + batch_size]], pad_id, features)
        logits = model(x.to(device), None if mask is None else mask.to(device))
        out.append(torch.softmax(logits.float(), -1).cpu())
        if on_batch:
            on_batch(min(i + batch_size, len(rows)))
    model.train(was_training)
    if not out:
        return torch.zeros((0, 0))
    probs = torch.empty_like(torch.cat(out))
    probs[torch.tensor(order, dtype=torch.int64)] = torch.cat(out)
    return probs


@dataclass
class _Run:
    cfg: TrainConfig
    task: TaskConfig
    spec: dict[str, Any]
    manifest: dict[str, Any]
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    device: str
    train_x: list[Any]
    train_y: torch.Tensor
    val_x: list[Any]
    val_y: list[int]
    loader: Examples
    weight: torch.Tensor | None
    total_steps: int | None
    run_config: dict[str, Any]
    flops_per_token: float | None
    peak: float | None
    wide_steps: int = 0  # wide-deep --wide-epochs: the bag of words alone for these first steps
    wide_cfg: TrainConfig | None = None  # their schedule (peak --wide-lr, no warm-up, cosine over them)
    phase_start: tuple[int, float, int] = (0, 0.0, 0)  # (step, elapsed, tokens) where the schedule's phase began
    best: dict[str, torch.Tensor] | None = dataclasses.field(default=None, repr=False)  # --keep-best weights
    best_val: dict[str, float] | None = None
    best_step: int = -1
    val_wide: torch.Tensor | None = dataclasses.field(default=None, repr=False)  # the frozen bag's val log-probs
    threads: int = dataclasses.field(default_factory=torch.get_num_threads)  # the run's (--wide-threads: restored)
    step: int = 0
    examples: int = 0
    tokens: int = 0
    elapsed: float = 0.0
    train_seconds: float = 0.0
    last_ckpt: Path | None = None
    key: bytes | None = dataclasses.field(default=None, repr=False)  # --key-file / --encrypt: never logged

    @property
    def features(self) -> bool:
        return self.manifest["input"] == "features"


def _class_weights(task: TaskConfig, counts: dict[str, int], labels: list[str]) -> torch.Tensor | None:
    if task.class_weights == "none":
        return None
    n = np.array([counts.get(name, 0) for name in labels], dtype=np.float64)
    return torch.tensor(n.sum() / (len(labels) * np.maximum(n, 1)), dtype=torch.float32)


def _horizon(cfg: TrainConfig, task: TaskConfig, n_train: int, wide_steps: int = 0) -> int | None:
    """Steps of the run when known: --max-steps, or (no horizon given) the bag's steps plus --epochs' steps."""
    limits = []
    if cfg.max_steps is not None:
        limits.append(cfg.max_steps)
    if not cfg.horizon_given:
        limits.append(wide_steps + max(1, math.ceil(task.epochs * n_train / cfg.batch_size)))
    return min(limits) if limits else None


def _wide_schedule(cfg: TrainConfig, task: TaskConfig, kind: str, n_train: int) -> tuple[int, TrainConfig | None]:
    """wide-deep with --wide-epochs E: the bag of words' own steps (E epochs) and schedule (peak --wide-lr or
    --lr, cosine to --min-lr scaled alike, no warm-up, as the bag-of-words row trains); else (0, None)."""
    if kind != "wide-deep" or not task.wide_epochs:
        return 0, None
    peak = task.wide_lr or cfg.lr
    return (max(1, math.ceil(task.wide_epochs * n_train / cfg.batch_size)),
            dataclasses.replace(cfg, lr=peak, min_lr=cfg.min_lr * peak / cfg.lr if cfg.lr else 0.0, warmup=0))


def _setup(cfg: TrainConfig, task: TaskConfig, overrides: dict[str, Any] | None,
           say: Callable[[str], None]) -> tuple[_Run, int | None]:
    from hwlm.data.classify import load_classify_manifest, read_split
    from hwlm.data.tokenizer import load_tokenizer

    if cfg.data is None:
        raise ConfigError("no data folder given: pass --data DIR (made by `hwlm prepare --task classify`)")
    manifest = load_classify_manifest(cfg.data)
    key = _key(cfg, manifest, say)
    if manifest["splits"]["train"]["examples"] < 1 or manifest["splits"]["val"]["examples"] < 1:
        raise DataError(f"{cfg.data} has an empty train or val split: prepare more examples")
    choice = select_device(cfg.device)
    device = choice.device
    resume = ckpt_io.resume_checkpoint(cfg.out, cfg.resume, say, key)
    saved = ckpt_io.read_json(resume / "config.json") if resume is not None else None
    spec = saved["classifier"] if saved is not None else classifier_spec(cfg, task, manifest, overrides)
    if saved is not None:
        ckpt_io.verify_checkpoint(resume, ckpt_io.checkpoint_key(resume, key))
        ckpt_io.check_same_model(resume, saved["classifier"], classifier_spec(cfg, task, manifest, overrides))
    seed_everything(cfg.seed)
    warm = not saved and (task.init_from or (spec["kind"] == "wide-deep" and task.wide_from))
    model = _warm_start(spec, task, manifest, cfg, say, key) if warm else build_for_spec(spec)
    model.to(device)
    sparse_lr = task.wide_lr if spec["kind"] == "wide-deep" else 0.0
    optimizer, opt_text = build_sparse_optimizer(model, cfg, choice.type, sparse_lr)
    say(f"{spec['kind']} classifier, {sum(p.numel() for p in model.parameters()):,} parameters "
        f"({sum(p.numel() for p in model.parameters() if p.requires_grad):,} trained) on {device}; {opt_text}")
    train_x, train_y = read_split(cfg.data, "train", manifest, key=key)
    val_x, val_y = read_split(cfg.data, "val", manifest, key=key)
    if manifest["input"] == "text":
        tok = load_tokenizer(Path(cfg.data))
        train_x, val_x = (encode_rows(tok, xs, spec) for xs in (train_x, val_x))
    wide_steps, wide_cfg = _wide_schedule(cfg, task, spec["kind"], len(train_x))
    flops, peak = _flops_per_token(spec), cfg.peak_flops  # MFU when the peak is given
    run_config = {"version": RUN_CONFIG_VERSION, "task": "classify", "train": to_dict(cfg), "task_config": to_dict(task),
                  "classifier": spec, "data": {"dir": str(Path(cfg.data).resolve()), "labels": manifest["labels"],
                                               "input": manifest["input"], "pad_id": manifest.get("pad_id"),
                                               "tokenizer_sha256": manifest.get("tokenizer_sha256"),
                                               "prepare": manifest.get("config", {})},
                  "runtime": {"device": device, "params": sum(p.numel() for p in model.parameters())}}
    run = _Run(cfg=cfg, task=task, spec=spec, manifest=manifest, model=model, optimizer=optimizer, device=device,
               train_x=train_x, train_y=torch.tensor(train_y), val_x=val_x, val_y=val_y,
               loader=Examples(len(train_x), cfg.batch_size, cfg.seed, [len(r) for r in train_x], task.length_pool),
               weight=_class_weights(task, manifest["class_counts"]["train"], manifest["labels"]),
               total_steps=_horizon(cfg, task, len(train_x), wide_steps), run_config=run_config,
               flops_per_token=flops, peak=peak, key=key, wide_steps=wide_steps, wide_cfg=wide_cfg)
    if resume is not None:
        state, _ = ckpt_io.restore_training(resume, model, optimizer, device, key)
        run.loader.load_state_dict(state["loader"])
        run.step, run.examples, run.tokens = int(state["step"]), int(state["examples"]), int(state["tokens"])
        run.elapsed, run.train_seconds = float(state["elapsed"]), float(state["train_seconds"])
        step0, elapsed0, tokens0 = state.get("phase_start", (0, 0.0, 0))
        run.phase_start = (int(step0), float(elapsed0), int(tokens0))
        run.last_ckpt = resume
        if task.keep_best:
            say("note: --keep-best compares only evaluations after this resume (the best weights are kept in memory)")
        say(f"resumed from {resume} at step {run.step}")
    atomic_write_json(cfg.out / "config.json", run_config)
    return run, (run.step if resume is not None else None)


def _key(cfg: TrainConfig, manifest: dict[str, Any], say: Callable[[str], None]) -> bytes | None:
    """The key of ``--key-file`` (for --encrypt, else $HWLM_DATA_KEY), checked against encrypted data here,
    before the model is built; None leaves readers to $HWLM_DATA_KEY."""
    from hwlm.crypt import key_for, load_key

    key = load_key(cfg.key_file) if cfg.key_file is not None or cfg.encrypt else None
    key_for(f"data folder {cfg.data}", manifest.get("encryption"), key)
    if manifest.get("encryption") and not cfg.encrypt:
        say("note: the data is encrypted but this run's checkpoints will not be: add --encrypt to encrypt them")
    return key


def _flops_per_token(spec: dict[str, Any]) -> float:
    """Training FLOPs per token the loop counts (real tokens; bag-of-words features; feature values), for MFU."""
    if spec["kind"] in ("transformer", "wide-deep"):  # the wide bag's share: under 1% of the trunk's
        from hwlm.config import from_dict
        from hwlm.formulas import train_flops_per_token
        from hwlm.model.config import ModelConfig

        return train_flops_per_token(from_dict(ModelConfig, spec["trunk"]).to_arch(), spec["max_len"])
    from hwlm.formulas import ClassifierShape, classifier_train_flops

    shape = ClassifierShape.from_spec(spec)
    if spec["kind"] == "mlp":  # the loop counts examples x features as its tokens
        return classifier_train_flops(shape, 0, 1) / shape.n_features
    return classifier_train_flops(shape, 1, 0)  # the head's per-example share left out (under 1% here)


def _warm_start(spec: dict[str, Any], task: TaskConfig, manifest: dict[str, Any], cfg: TrainConfig,
                say: Callable[[str], None], key: bytes | None = None) -> torch.nn.Module:
    """A Transformer or wide & deep classifier whose trunk holds the weights of the language-model run
    ``--init-from``, and (wide & deep) whose bag of words holds those of the run ``--wide-from``."""
    from hwlm.model.classifier import build_classifier
    from hwlm.train.classify_load import apply_lora, bow_run

    model = build_classifier(spec)
    if task.init_from:
        _, ckpt = lm_trunk(task.init_from, manifest, Path(cfg.data))
        ckpt_io.load_weights(ckpt, model.deep.trunk if spec["kind"] == "wide-deep" else model.trunk, "cpu", key)
        say(f"trunk initialized from {ckpt}" + (f", LoRA rank {spec['lora_rank']}" if spec.get("lora_rank") else ""))
    if spec["kind"] == "wide-deep" and task.wide_from:
        _, bow = bow_run(task.wide_from, manifest)
        ckpt_io.load_weights(bow, model.wide, "cpu", key)
        say(f"bag of words initialized from {bow}")
    return apply_lora(model, spec["lora_rank"], spec["lora_alpha"]) if spec.get("lora_rank") else model


def _save(run: _Run) -> None:
    """An atomic checkpoint in the shared layout (:func:`hwlm.train.checkpoint.save_checkpoint`: encrypted
    with --encrypt), plus labels.json; then keep the newest K."""
    state = {"examples": run.examples, "tokens": run.tokens, "elapsed": run.elapsed,
             "train_seconds": run.train_seconds, "loader": run.loader.state_dict(),
             "phase_start": list(run.phase_start)}
    tokenizer = Path(run.cfg.data) / "tokenizer.json" if run.manifest["input"] == "text" else None
    run.last_ckpt = ckpt_io.save_checkpoint(run.cfg.out, run.step, run.model, run.optimizer, state, run.run_config,
                                            tokenizer, run.cfg.keep_checkpoints,
                                            key=run.key if run.cfg.encrypt else None,
                                            extra_json={"labels.json": {"labels": run.manifest["labels"]}})


# The deep part's weights a staged wide & deep model tries on val (0: the bag alone).
DEEP_WEIGHTS = tuple(i / 10 for i in range(21))


def _val_metrics(run: _Run, logits: torch.Tensor) -> dict[str, float]:
    y = torch.tensor(run.val_y)
    loss = float(F.cross_entropy(logits, y, weight=run.weight))
    report = classification_report(run.val_y, logits.argmax(-1).tolist(), run.manifest["labels"])
    return {"val_loss": loss, "val_accuracy": report["accuracy"], "val_macro_f1": report["macro avg"]["f1-score"]}


def _validate(run: _Run) -> dict[str, float]:
    """Validation loss, accuracy and macro-F1. A staged wide & deep model (--wide-epochs) is scored as the frozen
    bag's log-probabilities plus ``w`` times the Transformer's, the ``w`` of :data:`DEEP_WEIGHTS` best on val
    (accuracy, then loss) set as its ``deep_weight`` (its logits are ``wide + w * deep``: the same softmax)."""
    pad = run.spec.get("pad_id") or 0
    if not hasattr(run.model, "deep_weight"):
        probs = predict_batches(run.model, run.val_x, pad, run.features, run.device)
        return _val_metrics(run, torch.log(probs.clamp_min(1e-12)))
    model = run.model
    parts = model.parts
    wide = run.val_wide
    if wide is None:
        model.parts = "wide"
        wide = torch.log(predict_batches(model, run.val_x, pad, False, run.device).clamp_min(1e-12))
        if run.step >= run.wide_steps:  # the bag is frozen from here on
            run.val_wide = wide
    best, best_w = _val_metrics(run, wide), 0.0
    if run.step > run.wide_steps:
        model.parts = "deep"
        deep = torch.log(predict_batches(model, run.val_x, pad, False, run.device).clamp_min(1e-12))
        for w in DEEP_WEIGHTS[1:]:
            m = _val_metrics(run, torch.log_softmax(wide + w * deep, -1))
            if (m["val_accuracy"], -m["val_loss"]) > (best["val_accuracy"], -best["val_loss"]):
                best, best_w = m, w
    model.parts = parts
    model.deep_weight.fill_(best_w)
    return best | {"deep_weight": best_w}


def _lr(run: _Run) -> tuple[float, bool]:
    """This step's learning rate, and whether a group's ``lr_scale`` (--wide-lr over --lr) applies to it: the bag's
    own schedule in wide-deep's first --wide-epochs (every group at it; only the bag has gradients), else the
    run's warm-up and cosine over its phase (the whole run, or what follows the bag's epochs)."""
    if run.step < run.wide_steps:
        return lr_at(run.step, run.wide_cfg, run.step / run.wide_steps, run.wide_steps), False
    step0 = run.phase_start[0]
    total = run.total_steps - step0 if run.total_steps else None
    return lr_at(run.step - step0, run.cfg, _progress(run), total), True


def _parts(run: _Run) -> None:
    """wide-deep with --wide-epochs: the bag alone for its steps (at --wide-threads), then the Transformer alone
    (the bag frozen, the run's threads)."""
    if run.wide_steps:
        wide = run.step < run.wide_steps
        run.model.parts = "wide" if wide else "deep"
        want = run.task.wide_threads if wide and run.task.wide_threads else run.threads
        if torch.get_num_threads() != want:
            torch.set_num_threads(want)


def _step(run: _Run, lr: float, scaled: bool = True) -> tuple[float, int]:
    """One optimizer step; returns the loss and the real tokens it saw."""
    for group in run.optimizer.param_groups:
        group["lr"] = lr * (group.get("lr_scale", 1.0) if scaled else 1.0)
    idx = run.loader.next_indices()
    x, mask = collate([run.train_x[i] for i in idx], run.spec.get("pad_id") or 0, run.features)
    y = run.train_y[idx].to(run.device)
    x = x.to(run.device)
    mask = None if mask is None else mask.to(run.device)
    with autocast(run.device.split(":")[0], "fp32" if run.cfg.precision in ("auto", "fp32") else run.cfg.precision):
        logits = run.model(x, mask)
    weight = None if run.weight is None else run.weight.to(run.device)
    loss = F.cross_entropy(logits.float(), y, weight=weight)
    loss.backward()
    if run.cfg.grad_clip > 0:  # over the dense gradients (a sparse table's rows are each touched by a few texts)
        torch.nn.utils.clip_grad_norm_([p for p in run.model.parameters() if p.grad is not None
                                        and not p.grad.is_sparse], run.cfg.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    if mask is None:
        return float(loss.detach()), len(idx) * x.shape[1]
    if run.spec["kind"] == "wide-deep":  # the Transformer's tokens, not the bag's features after them
        mask = mask & (x < run.spec["vocab_size"])
    return float(loss.detach()), int(mask.sum())


def _done(run: _Run) -> bool:
    cfg = run.cfg
    return ((run.total_steps is not None and run.step >= run.total_steps)
            or (cfg.time_budget is not None and run.elapsed >= cfg.time_budget)
            or (cfg.max_tokens is not None and run.tokens >= cfg.max_tokens))


def _progress(run: _Run) -> float:
    """How far the current phase is towards the run's horizon (steps, time or tokens, whichever ends first)."""
    step0, elapsed0, tokens0 = run.phase_start
    fracs = [(run.step - step0) / max(run.total_steps - step0, 1)] if run.total_steps else []
    if run.cfg.time_budget:
        fracs.append((run.elapsed - elapsed0) / max(run.cfg.time_budget - elapsed0, 1e-9))
    if run.cfg.max_tokens:
        fracs.append((run.tokens - tokens0) / max(run.cfg.max_tokens - tokens0, 1))
    return min(max(fracs, default=0.0), 1.0)


def _keep_best(run: _Run, val: dict[str, float]) -> None:
    """--keep-best: remember these weights if their validation accuracy is the best so far (ties: lower loss)."""
    if not run.task.keep_best:
        return
    b = run.best_val
    if b is None or (val["val_accuracy"], -val["val_loss"]) > (b["val_accuracy"], -b["val_loss"]):
        run.best = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        run.best_val, run.best_step = dict(val), run.step


def _restore_best(run: _Run, say: Callable[[str], None]) -> dict[str, float] | None:
    """--keep-best at the end: put back the best weights (when they are not the last); their validation."""
    if not run.task.keep_best or run.best is None or run.best_step == run.step:
        return None
    run.model.load_state_dict(run.best)
    say(f"--keep-best: restored the weights of step {run.best_step} (val accuracy {run.best_val['val_accuracy']:.4f}, "
        f"loss {run.best_val['val_loss']:.4f})")
    return dict(run.best_val)


def _loop(run: _Run, logger: RunLogger, bar: Progress, report: Callable[[int, dict[str, float]], None] | None,
          stop_at_step: int | None, say: Callable[[str], None] | None = None) -> tuple[float | None, dict[str, float]]:
    cfg = run.cfg
    losses: list[float] = []
    train_loss, val = None, {}
    say = say or (lambda m: None)
    win_tokens, win_seconds = 0, 0.0
    while not _done(run) and not (stop_at_step is not None and run.step >= stop_at_step):
        t0 = time.perf_counter()
        _parts(run)
        lr, scaled = _lr(run)
        loss, tokens = _step(run, lr, scaled)
        run.step += 1
        run.examples += cfg.batch_size
        run.tokens += tokens
        losses.append(loss)
        dt = time.perf_counter() - t0
        run.train_seconds += dt
        run.elapsed += dt
        win_tokens, win_seconds = win_tokens + tokens, win_seconds + dt
        end = _done(run)
        record: dict[str, Any] = {}
        if run.step % cfg.log_interval == 0 or end:
            train_loss = sum(losses) / len(losses)
            tps = win_tokens / max(win_seconds, 1e-9)
            mfu = tps * run.flops_per_token / run.peak if run.peak and run.flops_per_token else None
            record = {"step": run.step, "tokens": run.tokens, "loss": train_loss, "tokens_per_s": tps, "mfu": mfu,
                      "lr": lr}
            bar.update(run.step, train_loss, tps, mfu, None)
            losses, win_tokens, win_seconds = [], 0, 0.0
        bag_done = run.wide_steps and run.step == run.wide_steps
        if bag_done:  # the bag's epochs are over: the Transformer's schedule starts here
            run.phase_start = (run.step, run.elapsed, run.tokens)
        interval = cfg.eval_interval and run.step % cfg.eval_interval == 0 and run.step > run.wide_steps
        if interval or end or bag_done:
            t_eval = time.perf_counter()
            val = _validate(run)
            _keep_best(run, val)
            run.elapsed += time.perf_counter() - t_eval
            end = end or _done(run)  # the evaluation's time counts against --time-budget
            if end and (best := _restore_best(run, say)) is not None:
                val = best | {"restored_step": run.best_step}
            record = (record or {"step": run.step, "tokens": run.tokens}) | val
            if report is not None:
                report(run.step, val)  # may raise to stop the run (hwlm tune prunes here)
        if bag_done:
            say(f"bag of words trained alone for {run.step:,} steps (val accuracy {val['val_accuracy']:.4f}); now the "
                "Transformer alone, the bag frozen")
        if record:
            logger.log(record)
        paused = stop_at_step is not None and run.step >= stop_at_step
        if (cfg.ckpt_interval and run.step % cfg.ckpt_interval == 0) or end or paused:
            t_save = time.perf_counter()
            _save(run)
            run.elapsed += time.perf_counter() - t_save
    return train_loss, val


def _peak_memory(device: str) -> int | None:
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB; the process's peak


def _train_one(cfg: TrainConfig, task: TaskConfig, overrides: dict[str, Any] | None, say: Callable[[str], None],
               report: Callable[[int, dict[str, float]], None] | None,
               stop_at_step: int | None) -> ClassifyTrainResult:
    run, resume_step = _setup(cfg, task, overrides, say)
    logger = RunLogger(cfg.out, resume_step, cfg.tensorboard)
    bar = Progress(run.total_steps, run.step, cfg.progress)
    try:
        train_loss, val = _loop(run, logger, bar, report, stop_at_step, say)
    finally:
        torch.set_num_threads(run.threads)
        bar.close()
        logger.close()
    if not val:
        val = _validate(run)
    tps = run.tokens / run.train_seconds if run.train_seconds > 0 else 0.0
    mfu = tps * run.flops_per_token / run.peak if run.peak and run.flops_per_token and tps else None
    return ClassifyTrainResult(steps=run.step, examples=run.examples, tokens=run.tokens, seconds=run.elapsed,
                               tokens_per_s=tps, mfu=mfu, train_loss=train_loss, val_loss=val.get("val_loss"),
                               val_accuracy=val.get("val_accuracy"), val_macro_f1=val.get("val_macro_f1"),
                               run_dir=cfg.out, last_checkpoint=run.last_ckpt,
                               params=run.run_config["runtime"]["params"], device=run.device,
                               peak_memory_bytes=_peak_memory(run.device))


def train_classifier(cfg: TrainConfig, task: TaskConfig, model_overrides: dict[str, Any] | None = None, *,
                     say: Callable[[str], None] | None = None,
                     report: Callable[[int, dict[str, float]], None] | None = None,
                     stop_at_step: int | None = None) -> ClassifyTrainResult:
    """Train (or resume) a classifier on ``cfg.data`` into ``cfg.out``; with ``task.seeds = K`` K sub-runs.

    ``report(step, {"val_loss", "val_accuracy", "val_macro_f1"})`` is called after each evaluation
    (``hwlm tune`` raises from it to prune). ``stop_at_step`` pauses after that step with a checkpoint.
    """
    say = say or info
    if task.task != "classify":
        raise ConfigError(f"train_classifier trains --task classify, not {task.task!r}")
    with folder_lock(cfg.out, what="hwlm train"):  # one writer per run folder (its seed sub-runs included)
        return _train_seeds(cfg, task, model_overrides, say, report, stop_at_step)


def _train_seeds(cfg: TrainConfig, task: TaskConfig, model_overrides: dict[str, Any] | None,
                 say: Callable[[str], None], report: Callable[[int, dict[str, float]], None] | None,
                 stop_at_step: int | None) -> ClassifyTrainResult:
    if task.seeds == 1:
        return _train_one(cfg, task, model_overrides, say, report, stop_at_step)
    results = []
    for s in range(task.seeds):
        sub = dataclasses.replace(cfg, out=Path(cfg.out) / f"seed-{cfg.seed + s}", seed=cfg.seed + s)
        say(f"seed {cfg.seed + s} ({s + 1} of {task.seeds}) -> {sub.out}")
        results.append(_train_one(sub, task, model_overrides, say, None, stop_at_step))
    atomic_write_json(Path(cfg.out) / SEEDS_FILE, {"version": 1, "kind": "hwlm-seeds", "runs": [
        {"dir": f"seed-{cfg.seed + s}", "seed": cfg.seed + s, "val_macro_f1": r.val_macro_f1,
         "val_accuracy": r.val_accuracy} for s, r in enumerate(results)]})
    mean = lambda xs: float(np.mean(xs)) if all(x is not None for x in xs) else None  # noqa: E731
    last = results[-1]
    return dataclasses.replace(
        last, run_dir=Path(cfg.out), seconds=sum(r.seconds for r in results),
        val_loss=mean([r.val_loss for r in results]), val_accuracy=mean([r.val_accuracy for r in results]),
        val_macro_f1=mean([r.val_macro_f1 for r in results]),
        seed_runs=[{"dir": str(r.run_dir), "val_accuracy": r.val_accuracy, "val_macro_f1": r.val_macro_f1}
                   for r in results])
