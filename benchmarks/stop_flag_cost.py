"""What agreeing on a stop request costs per step under torchrun (gloo, 2 processes on this host).

Each training step already all-reduces one float64 (was the loss finite on every rank); hwlm sends the
stop request (SIGINT/SIGTERM seen by any rank) in the same all-reduce, as a second float64. This times
that all-reduce with one and with two elements, and a separate extra all-reduce (the alternative),
interleaved, median of ``--rounds`` rounds of ``--iters`` calls each.

    flock /tmp/hwlm-bench.lock python benchmarks/stop_flag_cost.py
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _time(fn, iters: int) -> float:
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def _worker(rank: int, world: int, port: int, iters: int, rounds: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    one, two = torch.ones(1, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    cases = {
        "1 float64 (finite flag alone)": lambda: dist.all_reduce(one, op=dist.ReduceOp.MIN),
        "2 float64 (finite + stop, hwlm)": lambda: dist.all_reduce(two, op=dist.ReduceOp.MIN),
        "1 + 1 separate all-reduces": lambda: (dist.all_reduce(one, op=dist.ReduceOp.MIN),
                                               dist.all_reduce(one, op=dist.ReduceOp.MAX)),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for fn in cases.values():
        _time(fn, 50)  # warm up the pairs
    for _ in range(rounds):
        for name, fn in cases.items():
            times[name].append(_time(fn, iters))
    if rank == 0:
        out.update({k: statistics.median(v) for k, v in times.items()})
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    from hwlm.train.launch import free_port

    load0 = os.getloadavg()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, free_port(), args.iters, args.rounds, out), nprocs=2, join=True)
        result = dict(out)
    load1 = os.getloadavg()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, gloo, 2 processes; "
          f"load average before {load0[0]:.2f}, after {load1[0]:.2f}")
    print("| all-reduce per step | microseconds |")
    print("|---|---:|")
    for name, seconds in result.items():
        print(f"| {name} | {seconds * 1e6:.0f} |")


if __name__ == "__main__":
    main()
