"""What encryption at rest costs: plain against encrypted, side by side in one run, on this machine.

    flock /tmp/hwlm-bench.lock .venv/bin/python benchmarks/encryption_cost.py
    flock /tmp/hwlm-bench.lock .venv/bin/python benchmarks/encryption_cost.py --mb 40 --presets tiny,mid

Three measurements, each plain (the peer) and encrypted (``hwlm.crypt``: AES-256-GCM in 1 MiB chunks),
interleaved and repeated, the median reported, with the ratio encrypted / plain:

* ``prepare``: ``hwlm prepare`` of a generated corpus (``--mb`` MB of pydoc-topic text, nothing downloaded)
  reusing one trained tokenizer, so both runs encode the same text; MB/s of text.
* loader: ``TokenLoader.next_batch`` (random windows: memory map against :class:`EncryptedShard`, which
  decrypts each 1 MiB chunk a window touches; two chunks cached) and ``eval_batches`` (sequential windows),
  batches/s at ``--batch-size`` x ``--block-size``.
* raw AES-256-GCM MB/s (encrypt, decrypt of 64 MiB), the floor of every cost above;
* checkpoints: :func:`save_checkpoint` and :func:`restore_training` (weights, AdamW state after one step,
  RNG) per preset, seconds.

The load average before and after is printed: on the shared 2-core machine other work inflates both sides,
the ratio less so.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from hwlm.crypt import encrypt_bytes, load_key, new_key_file
from hwlm.data import PrepareConfig, TokenLoader, eval_batches, prepare
from hwlm.model import ModelConfig, Transformer
from hwlm.train import checkpoint as ckpt_io


def _corpus(folder: Path, mb: int) -> Path:
    """About ``mb`` MB of text: pydoc topics in a seeded shuffled order, paragraphs as documents."""
    import random

    from pydoc_data.topics import topics

    rng, texts, size = random.Random(0), list(topics.values()), 0
    path = folder / "corpus.txt"
    with open(path, "w", encoding="utf-8") as f:
        while size < mb * 10**6:
            text = rng.choice(texts)
            f.write(text + "\n\n")
            size += len(text.encode("utf-8")) + 2
    return path


def _median(fn: Callable[[], float], repeats: int) -> float:
    return statistics.median(fn() for _ in range(repeats))


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_prepare(root: Path, corpus: Path, key_file: Path, repeats: int) -> tuple[dict, Path, Path]:
    base = dict(inputs=[str(corpus)], vocab_size=4096, tokenizer_train_chars=5_000_000)
    first = prepare(PrepareConfig(out=root / "tok", **base))  # trains the tokenizer once
    tok = root / "tok" / "tokenizer.json"
    runs = {"plain": [], "encrypted": []}
    for _ in range(repeats):
        for case, extra in (("plain", {}), ("encrypted", {"encrypt": True, "key_file": key_file})):
            r = prepare(PrepareConfig(out=root / case, tokenizer=tok, **{**base, **extra}))
            runs[case].append(r.mb_per_s)
    tokens = sum(s["tokens"] for s in first.manifest["splits"].values())
    return {c: statistics.median(v) for c, v in runs.items()} | {"tokens": tokens}, root / "plain", root / "encrypted"


def bench_aes(key: bytes, mb: int, repeats: int) -> tuple[float, float]:
    """Raw :mod:`hwlm.crypt` throughput in MB/s (encrypt, decrypt) over ``mb`` MB: the floor of every cost."""
    from hwlm.crypt import EncryptedReader

    data = os.urandom(mb * 2**20)
    blob = encrypt_bytes(data, key)
    path = Path(tempfile.mkdtemp(dir="runs")) / "aes.enc"
    path.write_bytes(blob)

    def decrypt() -> float:
        with EncryptedReader(path, key, cache=0) as r:
            return _timed(r.read)
    enc = _median(lambda: _timed(lambda: encrypt_bytes(data, key)), repeats)
    dec = _median(decrypt, repeats)
    shutil.rmtree(path.parent, ignore_errors=True)
    return len(data) / 1e6 / enc, len(data) / 1e6 / dec


def bench_loader(plain: Path, enc: Path, key: bytes, batch: int, block: int, batches: int, repeats: int) -> dict:
    def random_batches(folder: Path, k: bytes | None) -> float:
        loader = TokenLoader(folder, "train", batch, block, seed=0, verify=False, key=k)
        return batches / _timed(lambda: [loader.next_batch() for _ in range(batches)])

    def sequential(folder: Path, k: bytes | None) -> float:
        t0 = time.perf_counter()
        n = sum(1 for _ in eval_batches(folder, "train", batch, block, max_batches=batches, verify=False, key=k))
        return n / (time.perf_counter() - t0)

    out = {}
    for name, fn in (("TokenLoader random windows", random_batches), ("eval_batches sequential", sequential)):
        p = _median(lambda: fn(plain, None), repeats)
        e = _median(lambda: fn(enc, key), repeats)
        out[name] = (p, e)
    return out


def bench_checkpoints(root: Path, presets: list[str], key: bytes, repeats: int) -> list[dict]:
    rows = []
    tok = root / "tokenizer.json"
    tok.write_text("{}", encoding="utf-8")
    for preset in presets:
        cfg = ModelConfig.from_name(preset)
        model = Transformer(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randint(0, cfg.vocab_size, (1, min(cfg.block_size, 64)))
        model(x, x)[1].backward()
        opt.step()  # both AdamW moments exist
        row = {"preset": preset, "params": sum(p.numel() for p in model.parameters())}
        times: dict[str, list[float]] = {f"{op}_{case}": [] for op in ("save", "load") for case in ("plain", "enc")}
        for i in range(repeats):
            for case, k in (("plain", None), ("enc", key)):
                run = root / f"{preset}-{case}"
                t0 = time.perf_counter()
                ckpt = ckpt_io.save_checkpoint(run, i + 1, model, opt, {"tokens": 0}, {"model": preset}, tok, keep=2,
                                               key=k)
                times[f"save_{case}"].append(time.perf_counter() - t0)
                fresh = Transformer(cfg)
                fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-4)
                t0 = time.perf_counter()
                ckpt_io.restore_training(ckpt, fresh, fresh_opt, "cpu", k)
                times[f"load_{case}"].append(time.perf_counter() - t0)
        row |= {k: statistics.median(v) for k, v in times.items()}
        row["bytes"] = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=20, help="corpus size in MB (default: 20)")
    ap.add_argument("--presets", default="tiny,mid")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    Path("runs").mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="enc-bench-", dir="runs"))
    key_file = root / "bench.key"
    new_key_file(key_file)
    key = load_key(key_file)
    load0 = os.getloadavg()
    corpus = _corpus(root, args.mb)
    prep, plain, enc = bench_prepare(root, corpus, key_file, args.repeats)
    loader = bench_loader(plain, enc, key, args.batch_size, args.block_size, args.batches, args.repeats)
    ckpts = bench_checkpoints(root, args.presets.split(","), key, args.repeats)
    aes_enc, aes_dec = bench_aes(key, 64, args.repeats)
    load1 = os.getloadavg()
    shutil.rmtree(root, ignore_errors=True)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}; load average before {load0[0]:.2f}, after {load1[0]:.2f}; "
          f"median of {args.repeats}")
    print(f"\nAES-256-GCM in 1 MiB chunks over 64 MiB: encrypt {aes_enc:,.0f} MB/s, decrypt {aes_dec:,.0f} MB/s")
    print(f"\n| prepare ({args.mb} MB text, {prep['tokens']:,} tokens) | plain MB/s | encrypted MB/s | encrypted / plain |")
    print("|---|---:|---:|---:|")
    print(f"| tokenize + write shards | {prep['plain']:.2f} | {prep['encrypted']:.2f} | "
          f"{prep['encrypted'] / prep['plain']:.2f}x |")
    print(f"\n| loader ({args.batch_size} x {args.block_size}) | plain batches/s | encrypted batches/s | "
          "encrypted / plain |")
    print("|---|---:|---:|---:|")
    for name, (p, e) in loader.items():
        print(f"| {name} | {p:,.0f} | {e:,.0f} | {e / p:.3f}x |")
    print("\n| checkpoint | parameters | size | save plain (s) | save encrypted (s) | load plain (s) | "
          "load encrypted (s) | save ratio | load ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in ckpts:
        print(f"| {r['preset']} | {r['params'] / 1e6:.2f} M | {r['bytes'] / 1e6:.1f} MB | {r['save_plain']:.3f} | "
              f"{r['save_enc']:.3f} | {r['load_plain']:.3f} | {r['load_enc']:.3f} | "
              f"{r['save_enc'] / r['save_plain']:.2f}x | {r['load_enc'] / r['load_plain']:.2f}x |")


if __name__ == "__main__":
    main()
