"""Small generated labelled sets for the classification tests: ``from classify_tiny import ...``.

Three sentiment-like classes whose label is carried by a few cue words among filler, so a model has
to read the text to beat chance (1/3), plus deliberate duplicates and a text with two labels.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

CUES = {"pos": "good great lovely superb happy".split(), "neg": "bad awful poor terrible sad".split(),
        "mid": "okay average plain fair usual".split()}
FILLER = "the a movie film plot actor scene story it was and of in very".split()


def rows(n: int = 450, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.choice(sorted(CUES))
        words = [rng.choice(FILLER) for _ in range(rng.randint(4, 12))] + [rng.choice(CUES[label])]
        rng.shuffle(words)
        out.append({"text": " ".join(words), "label": label})
    return out


def write_jsonl(path: Path, data: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
    return path


def write_csv(path: Path, data: list[dict], fields: tuple[str, ...] = ("text", "label")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        for r in data:
            w.writerow({k: r[k] for k in fields})
    return path


def prepare_cls(root: Path, n: int = 450, **overrides) -> Path:
    """A prepared classification folder (vocab 300) under ``root``; returns its path."""
    from hwlm.data.classify import prepare_classify
    from hwlm.data.config import PrepareConfig

    root.mkdir(parents=True, exist_ok=True)
    src = write_jsonl(root / "rows.jsonl", rows(n))
    kw = dict(task="classify", inputs=[str(src)], out=root / "cls", vocab_size=300, seed=0)
    kw.update(overrides)
    prepare_classify(PrepareConfig(**kw))
    return root / "cls"


def cls_cfg(data: Path, out: Path, **overrides):
    """A short quiet CPU run for a classifier."""
    from hwlm.train.config import TrainConfig

    kw = dict(data=data, out=out, model="debug", batch_size=32, max_steps=60, lr=5e-3, min_lr=5e-4, warmup=5,
              eval_interval=30, log_interval=10, ckpt_interval=30, device="cpu", progress=False, tensorboard=False,
              precision="fp32")
    kw.update(overrides)
    return TrainConfig(**kw)
