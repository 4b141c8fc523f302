"""Does ``hwlm tune`` find a better configuration than the default, judged on text the study never saw?

1. The built-in corpus (Python's pydoc topics) is cut by topic into a study set and a held-out set (every
   tenth topic). The study set is prepared (its own train/val split: the study's validation split).
2. ``hwlm tune`` runs ``--trials`` trials of ``--budget`` seconds over learning rate, warm-up, depth, width,
   heads, batch and dropout (TPE, median pruning, SQLite).
3. The best recipe and the default ``tiny`` preset are each trained from ``--seeds`` fresh seeds for the same
   ``--budget`` seconds and evaluated on the held-out topics (``hwlm eval FILES``: loss per token, bits per
   byte); the table gives the mean and spread over seeds.

Run alone (it holds the CPU for about trials x (budget + start-up) + 2 x seeds x budget seconds):

    flock /tmp/hwlm-bench.lock .venv/bin/python benchmarks/tune.py --trials 12 --budget 20 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "runs" / "bench" / "tune"

SPACE = """
[tune]
task = "lm"
eval_interval = 50

[space]
lr = {{low = 3e-4, high = 6e-3, log = true}}
warmup = {{low = 0, high = 100, step = 10}}
n_layer = {{choices = [2, 4, 6]}}
n_embd = {{choices = [64, 128, 192]}}
n_head = {{choices = [2, 4]}}
batch_size = {{choices = [8, 16, 32]}}
dropout = {{choices = [0.0, 0.1]}}

[train]
model = "tiny"
eval_batches = 10
log_interval = 25
ckpt_interval = 100000
precision = "fp32"
device = "cpu"
"""


def corpus() -> tuple[Path, list[str]]:
    from pydoc_data.topics import topics

    text_dir, held = WORK / "study-text", WORK / "held-out"
    for d in (text_dir, held):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    files = []
    for i, (name, body) in enumerate(sorted(topics.items())):
        target = held if i % 10 == 0 else text_dir
        path = target / f"{i:04d}.txt"
        path.write_text(body, encoding="utf-8")
        if target is held:
            files.append(str(path))
    return text_dir, files


def train_and_judge(recipe: Path | None, data: Path, out: Path, seed: int, budget: float,
                    held: list[str]) -> dict[str, Any]:
    from hwlm.config import load_toml, resolve
    from hwlm.evaluate import EvalConfig, evaluate
    from hwlm.model.config import ModelConfig
    from hwlm.train import train
    from hwlm.train.config import TrainConfig

    shutil.rmtree(out, ignore_errors=True)
    over = dict(data=data, out=out, seed=seed, time_budget=budget, eval_interval=0, ckpt_interval=100000,
                progress=False, tensorboard=False, device="cpu", precision="fp32")
    cfg = resolve(TrainConfig, file=recipe, section="train", overrides=over) if recipe else TrainConfig(**over)
    vocab = json.loads((data / "manifest.json").read_text())["vocab_size"]
    table = load_toml(recipe).get("model", {}) if recipe else {}
    r = train(cfg, ModelConfig.from_name(cfg.model, **{**table, "vocab_size": vocab}), say=lambda m: None)
    ev = evaluate(EvalConfig(run=out, files=held, device="cpu"))
    return {"seed": seed, "steps": r.steps, "tokens": r.tokens, "held_out_loss": ev.loss,
            "bits_per_byte": ev.bits_per_byte}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--budget", type=float, default=20.0)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    import torch

    from hwlm.data import PrepareConfig, prepare
    from hwlm.tune import TuneConfig, tune

    torch.set_num_threads(a.threads)
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    load0, t0 = os.getloadavg(), time.perf_counter()
    text_dir, held = corpus()
    data = WORK / "data"
    prepare(PrepareConfig(inputs=[str(text_dir)], out=data, vocab_size=2048, val_fraction=0.1))
    space = WORK / "space.toml"
    space.write_text(SPACE.format())
    shutil.rmtree(WORK / "study", ignore_errors=True)
    result = tune(TuneConfig(config=space, data=data, out=WORK / "study", trials=a.trials,
                             trial_budget=f"{a.budget}s", device="cpu", price_on=["h100-sxm", "tpu-v5e"]))
    rows = {"best": [], "default tiny": []}
    for s in range(a.seeds):
        rows["best"].append(train_and_judge(result.best_recipe, data, WORK / f"best-{s}", 100 + s, a.budget, held))
        rows["default tiny"].append(train_and_judge(None, data, WORK / f"tiny-{s}", 100 + s, a.budget, held))
    summary = {k: {"mean": statistics.mean(r["held_out_loss"] for r in v),
                   "std": statistics.stdev(r["held_out_loss"] for r in v) if len(v) > 1 else 0.0,
                   "bpb": statistics.mean(r["bits_per_byte"] for r in v)} for k, v in rows.items()}
    record = {"trials": a.trials, "budget_s": a.budget, "seeds": a.seeds, "threads": a.threads, "cpus": os.cpu_count(),
              "load_before": load0, "load_after": os.getloadavg(), "seconds": time.perf_counter() - t0,
              "best_params": result.best_params, "best_val_loss": result.best_value,
              "states": [t["state"] for t in result.trials], "rows": rows, "summary": summary}
    (ROOT / "runs" / "bench" / "tune.json").write_text(json.dumps(record, indent=1, default=str))
    print(json.dumps({k: record[k] for k in ("best_params", "best_val_loss", "states", "summary", "load_before",
                                             "load_after", "seconds")}, indent=1, default=str))


if __name__ == "__main__":
    main()
