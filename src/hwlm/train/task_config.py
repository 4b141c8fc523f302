"""``TaskConfig``: what a run learns besides a language model, torch-free for the CLI parser.

``hwlm train --task classify`` trains a classifier on a folder from ``hwlm prepare --task classify``
with the same :class:`~hwlm.train.config.TrainConfig` (data, out, batch size, learning rate and its
schedule, horizon, checkpoints, resume, seed, device); the fields here add what only a classifier or a
chat fine-tune needs. A recipe sets them in a ``[task]`` table.

    hwlm train --task classify --classifier lstm --data runs/cls --out runs/lstm --max-steps 300
    hwlm train --task classify --classifier transformer --init-from runs/lm --lora-rank 8 ...
    hwlm train --task chat --init-from runs/lm --data dialogues.jsonl --out runs/chat
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hwlm.config import option
from hwlm.errors import ConfigError

__all__ = ["TaskConfig", "Task", "Kind"]

Task = Literal["lm", "classify", "chat"]
Kind = Literal["transformer", "lstm", "bow", "mlp", "wide-deep"]


@dataclass
class TaskConfig:
    """Classifier and chat fine-tuning settings (``[task]`` in a recipe)."""

    task: Task = option("lm", "lm: next-token language model; classify: a classifier on `prepare --task classify` "
                              "data; chat: fine-tune --init-from on JSON Lines conversations")
    classifier: Kind = option("transformer", "with --task classify: transformer, lstm, bow (fastText-style bag "
                                             "of words), mlp (feature rows, e.g. builtin:digits) or wide-deep "
                                             "(the Transformer and the bag of words, trained together)")
    pooling: Literal["last", "mean"] = option("last", "Transformer pooling: last real token (exports to Hugging "
                                                      "Face) or the mean over real tokens")
    init_from: Path | None = option(None, "start the Transformer trunk from this hwlm language-model run "
                                          "(its tokenizer must be the data's: prepare with --tokenizer RUN/tokenizer.json)")
    lora_rank: int = option(0, "0: fine-tune every weight; r > 0: train rank-r LoRA adapters (peft) and the head")
    lora_alpha: float = option(16.0, "LoRA scaling numerator (the update is scaled by alpha / rank)")
    class_weights: Literal["none", "balanced"] = option("none", "balanced: weigh each class's loss by "
                                                                "n / (classes * its count), for imbalanced data")
    seeds: int = option(1, "train this many sub-runs (OUT/seed-S for S = seed, seed+1, ...); eval reports the "
                           "mean and spread over them")
    epochs: float = option(3.0, "passes over the training split when no --max-steps / --time-budget is given")
    max_len: int = option(128, "tokens kept per text (the first ones); a Transformer trunk caps it at its block size")
    embed: int = option(64, "LSTM / bag-of-words (and wide-deep's bag) embedding width")
    hidden: int = option(128, "LSTM state / MLP hidden width")
    layers: int = option(1, "LSTM layers / MLP hidden layers")
    dropout: float = option(0.1, "dropout of the LSTM, bag-of-words and MLP classifiers (wide-deep: of its bag)")
    ngrams: int = option(2, "bag of words: 1 (tokens, and words in new runs) or 2 (also hashed token and word bigrams)")
    buckets: int = option(1 << 16, "bag of words: hash buckets for bigrams")
    length_pool: int = option(0, "0: batches drawn at random; N: each batch from a pool of N batches' texts of "
                                 "similar length (less padding for the Transformer and LSTM)")
    wide_from: Path | None = option(None, "wide-deep: start its bag of words from this bag-of-words run (a warm "
                                          "start, as Cheng et al. 2016 do); that run's embed, buckets and ngrams")
    wide_lr: float = option(0.0, "wide-deep: the bag of words' peak learning rate (0: --lr); it follows the same "
                                 "warm-up and decay")
    wide_epochs: float = option(0.0, "wide-deep: 0 trains both parts together; E > 0 trains the bag of words alone "
                                     "for E epochs first (at --wide-lr), then the Transformer alone for the rest of "
                                     "the horizon, the bag frozen; the logits are the bag's plus w times the "
                                     "Transformer's, w in 0, 0.1, ..., 2 chosen on val at each evaluation")
    wide_threads: int = option(0, "wide-deep --wide-epochs: torch threads while the bag trains alone (0: as the "
                                  "run's); its small sparse kernels ran 6x slower at 2 threads than at 1 on a loaded "
                                  "2-core machine")
    keep_best: bool = option(False, "classify: end with the weights of the best validation accuracy seen at the "
                                    "evaluations (every --eval-interval steps and the last; --wide-epochs: also at "
                                    "the end of the bag's epochs); the last checkpoint holds them. Kept in memory: "
                                    "after a resume only later evaluations count")

    def __post_init__(self) -> None:
        if self.init_from is not None:
            self.init_from = Path(self.init_from)
        if self.wide_from is not None:
            self.wide_from = Path(self.wide_from)
            if self.task == "classify" and self.classifier != "wide-deep":
                raise ConfigError(f"--wide-from starts the bag of words of --classifier wide-deep, not "
                                  f"{self.classifier}; drop it")
        if self.length_pool < 0:
            raise ConfigError(f"task config 'length_pool' is {self.length_pool}; use 0 (off) or N >= 1 batches")
        for name in ("seeds", "max_len", "embed", "hidden", "layers", "buckets"):
            if getattr(self, name) < 1:
                raise ConfigError(f"task config '{name}' is {getattr(self, name)}; it must be at least 1")
        if self.lora_rank < 0:
            raise ConfigError(f"task config 'lora_rank' is {self.lora_rank}; use 0 (full fine-tune) or a rank >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"task config 'dropout' is {self.dropout}; it must be in [0, 1)")
        if not self.epochs > 0:
            raise ConfigError(f"task config 'epochs' is {self.epochs}; it must be more than zero")
        if self.ngrams not in (1, 2):
            raise ConfigError(f"task config 'ngrams' is {self.ngrams}; choose 1 or 2")
        if self.wide_lr < 0:
            raise ConfigError(f"task config 'wide_lr' is {self.wide_lr}; use 0 (the run's --lr) or a positive rate")
        if self.wide_epochs < 0 or self.wide_epochs != self.wide_epochs:
            raise ConfigError(f"task config 'wide_epochs' is {self.wide_epochs}; use 0 (joint) or a positive number "
                              "of epochs")
        if self.wide_threads < 0:
            raise ConfigError(f"task config 'wide_threads' is {self.wide_threads}; use 0 (the run's) or N >= 1")
        if self.wide_threads and not self.wide_epochs:
            raise ConfigError("--wide-threads sets the threads of the bag's own epochs: give --wide-epochs E too")
        if self.wide_epochs and self.task == "classify" and self.classifier != "wide-deep":
            raise ConfigError(f"--wide-epochs trains the bag of words of --classifier wide-deep first, not "
                              f"{self.classifier}; drop it")
        if self.lora_rank and self.classifier != "transformer" and self.task == "classify":
            raise ConfigError(f"--lora-rank applies to the Transformer classifier, not {self.classifier}; drop it")
