"""Throughput and peak memory of `hwlm prepare` on generated corpora.

    .venv/bin/python benchmarks/prepare.py                    # 10MB and 100MB
    .venv/bin/python benchmarks/prepare.py --sizes 10MB,1GB --work-dir /big/tmp

Corpora are generated on the fly (JSON Lines, documents of 1-20 KB, Zipf-distributed words taken
from Python's pydoc topics plus some Chinese and emoji) so nothing is downloaded. For each size the
tokenizer is trained once (timed as its own row), then encoding is timed, reusing that tokenizer, as:

* ``1 proc, 1 thread``: workers=1 and RAYON_NUM_THREADS=1 (the serial baseline);
* ``1 proc, N threads``: workers=1, tokenizers' own ``encode_batch`` parallelism over N threads;
* ``N procs``: workers=N spawned processes, each single-threaded.

Every case runs in a fresh subprocess; its peak RSS is the max of its own and its children's
``ru_maxrss``. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SIZES = {"10MB": 10 * 10**6, "100MB": 100 * 10**6, "1GB": 10**9}

# Runs inside the case's subprocess: prepare, then report time and peak RSS (self + worker children).
_CHILD = """
import json, resource, sys
from hwlm.data import PrepareConfig, prepare
res = prepare(PrepareConfig(**json.loads(sys.argv[1])))
peak_kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
d = res.to_dict()
print(json.dumps({"seconds": res.seconds, "bytes": sum(d["bytes"].values()), "peak_rss_mb": peak_kb / 1024,
                  "tokens": sum(d["tokens"].values())}))
"""


def _words() -> list[str]:
    from pydoc_data.topics import topics

    words = sorted(set(re.findall(r"[A-Za-z_]{2,}", " ".join(topics.values()))))
    return words + ["数据", "模型", "训练", "硬件", "😀", "🚀", "naïve", "Größe"]


def generate(path: Path, size: int, seed: int = 0) -> None:
    """Write about ``size`` bytes of JSON Lines documents to ``path``, in bounded memory."""
    rng = np.random.default_rng(seed)
    words = np.array(_words())
    p = 1.0 / np.arange(1, len(words) + 1)  # Zipf-like word frequencies, as in real text
    p /= p.sum()
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < size:
            n = int(rng.integers(150, 3000))
            text = " ".join(words[rng.choice(len(words), size=n, p=p)].tolist())
            text = re.sub(r"((?:\S+ ){12})", r"\1\n", text, count=n // 12)  # some line structure
            line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
            f.write(line)
            written += len(line.encode())


def run_case(cfg: dict, env_extra: dict[str, str]) -> dict:
    env = {**os.environ, **env_extra}
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cfg)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"case failed: {cfg} {env_extra}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10MB,100MB", help=f"comma-separated, from {', '.join(SIZES)}")
    ap.add_argument("--workers", type=int, default=2, help="N for the parallel cases")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--work-dir", type=Path, default=None, help="where corpora and outputs go (default: a temp dir)")
    args = ap.parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    bad = [s for s in sizes if s not in SIZES]
    if bad:
        ap.error(f"unknown size {bad[0]!r}; choose from {', '.join(SIZES)}")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="hwlm-bench-prepare-"))
    n = args.workers
    rows = []
    for size in sizes:
        corpus = work / f"corpus-{size}.jsonl"
        if not corpus.exists():
            generate(corpus, SIZES[size])
        base = {"inputs": [str(corpus)], "vocab_size": args.vocab_size}
        train = run_case({**base, "out": str(work / f"out-{size}-train")}, {})
        rows.append((size, "train tokenizer + 1 proc encode", train))
        tok = str(work / f"out-{size}-train" / "tokenizer.json")
        cases = [("1 proc, 1 thread", 1, {"RAYON_NUM_THREADS": "1"}),
                 (f"1 proc, {n} threads (encode_batch)", 1, {"RAYON_NUM_THREADS": str(n)}),
                 (f"{n} procs", n, {})]
        for label, workers, env in cases:
            r = run_case({**base, "tokenizer": tok, "workers": workers, "out": str(work / f"out-{size}-{workers}")}, env)
            rows.append((size, label, r))
    print(f"| corpus | case | MB/s | tokens | seconds | peak RSS (MB) |\n|---|---|---|---|---|---|")
    for size, label, r in rows:
        print(f"| {size} | {label} | {r['bytes'] / 1e6 / r['seconds']:.2f} | {r['tokens']:,} | {r['seconds']:.1f} "
              f"| {r['peak_rss_mb']:.0f} |")
    print(f"\n(cpus: {os.cpu_count()}; work dir: {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
