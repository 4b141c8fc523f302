"""Tiny corpora and configs shared by the tests: ``from tiny import write_corpus, prepare_tiny, tiny_cfg``.

The session-scoped fixtures built from these (``tiny_data``, ``tiny_run``) live in ``conftest.py``;
use those where a test only reads the folder, and these functions where it must write into its own.
"""

from __future__ import annotations

import random
from pathlib import Path

from hwlm.data import PrepareConfig, prepare
from hwlm.train.config import TrainConfig

WORDS = ("the cat sat on a mat and the dog ran to the park while a bird sang over the tree "
         "because it was a warm day in the small town by the river").split()


def write_corpus(folder: Path, n_docs: int = 80, seed: int = 0) -> list[Path]:
    """``n_docs`` small files of simple sentences (with a few multi-byte characters)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n_docs):
        sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))).capitalize() + "."
                     for _ in range(rng.randint(4, 8))]
        if i % 7 == 0:
            sentences.append("Café naïve — ünïcode ok.")
        f = folder / f"doc{i:03d}.txt"
        f.write_text(" ".join(sentences) + "\n", encoding="utf-8")
        files.append(f)
    return files


def prepare_tiny(root: Path) -> Path:
    """A prepared data folder (vocab 300) under ``root``; returns its path."""
    write_corpus(root / "text")
    out = root / "data"
    prepare(PrepareConfig(inputs=[str(root / "text")], out=out, vocab_size=300, val_fraction=0.2, seed=0))
    return out


def tiny_cfg(data: Path, out: Path, **overrides) -> TrainConfig:
    """A few-step CPU fp32 run of the debug preset, quiet."""
    kw = dict(data=data, out=out, model="debug", batch_size=4, max_steps=6, lr=3e-3, min_lr=3e-4, warmup=2,
              log_interval=1, eval_interval=3, eval_batches=2, ckpt_interval=3, precision="fp32", device="cpu",
              progress=False, tensorboard=False, peak_flops=1e9)
    kw.update(overrides)
    return TrainConfig(**kw)

