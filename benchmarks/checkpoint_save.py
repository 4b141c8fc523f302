"""How long a checkpoint save (and the verify before a resume) takes, per model preset, on this machine.

The figure that matters for preemption: on SIGTERM a run finishes its step and saves, and torchrun
(``--max-restarts 0``: its agent waits 30 s before SIGKILL) and schedulers (Kubernetes'
``terminationGracePeriodSeconds`` defaults to 30 s; SLURM's ``KillWait`` too) allow about 30 s.
Each preset gets fp32 weights and an AdamW state after one real step (so ``optimizer.pt`` holds
both moments), then :func:`hwlm.train.checkpoint.save_checkpoint` runs as training calls it:
safetensors weights, ``torch.save`` of the optimizer and RNG states, sha256 of every file for
``COMPLETE``, fsync, rename. ``verify`` is :func:`verify_checkpoint` (every sha256 again), what
``--resume auto`` does before loading. Best of ``--repeats`` (other processes only add time).

    flock /tmp/hwlm-bench.lock python benchmarks/checkpoint_save.py --presets debug,tiny,mid,gpt2-124m
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from hwlm.model import ModelConfig, Transformer
from hwlm.train import checkpoint as ckpt_io


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def measure(preset: str, root: Path, repeats: int) -> dict:
    cfg = ModelConfig.from_name(preset)
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, cfg.vocab_size, (1, min(cfg.block_size, 64)))
    _, loss = model(x, x)
    loss.backward()
    opt.step()  # materialize exp_avg / exp_avg_sq
    opt.zero_grad(set_to_none=True)
    tok = root / "tokenizer.json"
    tok.write_text("{}", encoding="utf-8")
    run = root / preset
    saves, verifies, size = [], [], 0
    for i in range(repeats):
        t0 = time.perf_counter()
        ckpt = ckpt_io.save_checkpoint(run, i + 1, model, opt, {"tokens": 0}, {"model": preset}, tok, keep=2)
        saves.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ckpt_io.verify_checkpoint(ckpt)
        verifies.append(time.perf_counter() - t0)
        size = _folder_bytes(ckpt)
    shutil.rmtree(run, ignore_errors=True)
    params = sum(p.numel() for p in model.parameters())
    return {"preset": preset, "params": params, "bytes": size, "save_s": min(saves), "verify_s": min(verifies)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="debug,tiny,mid,gpt2-124m")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--root", default=None, help="folder to write into (default: a temp folder under runs/)")
    args = ap.parse_args()
    Path("runs").mkdir(exist_ok=True)
    root = Path(args.root or tempfile.mkdtemp(prefix="ckpt-bench-", dir="runs"))
    root.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    rows = [measure(p, root, args.repeats) for p in args.presets.split(",")]
    load1 = os.getloadavg()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}; load average before {load0[0]:.2f}, after {load1[0]:.2f}; "
          f"folder {root}")
    print("| preset | parameters | checkpoint size | save (s) | verify (s) | MB/s saved |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['preset']} | {r['params'] / 1e6:.2f} M | {r['bytes'] / 1e6:.1f} MB | {r['save_s']:.3f} | "
              f"{r['verify_s']:.3f} | {r['bytes'] / 1e6 / r['save_s']:.0f} |")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
