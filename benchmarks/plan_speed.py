"""How long ``hwlm plan`` takes to answer, as a user runs it: a fresh process per command.

Each command runs ``--repeat`` times as ``python -m hwlm ...``; the table gives the least and the median
CPU seconds (user + system of the child, from ``os.wait4``) and wall seconds. CPU time is what the planner
spends; wall time also holds what the other processes of a shared machine take from it. By default the
byte-code cache is warm (a first, untimed run writes it under a temporary ``PYTHONPYCACHEPREFIX``), as an
installed package has it; ``--cold`` times every run without one (``PYTHONDONTWRITEBYTECODE``), as a
checkout whose environment forbids writing it does. ``--src DIR`` times another tree's ``hwlm`` (e.g. a
``git worktree`` of an older commit), for before/after comparisons.

    flock /tmp/hwlm-bench.lock python benchmarks/plan_speed.py --repeat 7
    flock /tmp/hwlm-bench.lock python benchmarks/plan_speed.py --src /tmp/old/src --repeat 7
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

COMMANDS = (
    "plan recommend --model llama-3.1-8b --tokens 10e9 --deadline 7d --objective cost",
    "plan recommend --model llama-2-13b --tokens 300B --deadline 14d --objective cost",
    "plan recommend --model mixtral-8x7b --tokens 1T --objective time",
    "plan recommend --model deepseek-v3 --rate 50 --slo-ttft 2 --precision fp8 --objective cost",
    "plan train --model llama-2-7b --tokens 2T --hardware a100-80gb --devices 1024",
    "plan serve --model deepseek-v3 --hardware h200 --devices 8 --precision fp8 --rate 50 --slo-ttft 2",
)


def _run(cmd: str, env: dict[str, str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one ``python -m hwlm CMD`` process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "hwlm", *shlex.split(cmd)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"`hwlm {cmd}` failed: {proc.stderr.read().decode().strip()[-400:]}")
    return usage.ru_utime + usage.ru_stime, wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per command (default 5)")
    ap.add_argument("--src", help="the src/ folder of the hwlm to time (default: the installed one)")
    ap.add_argument("--cold", action="store_true", help="no byte-code cache: every run compiles the sources")
    ap.add_argument("--command", action="append", help="a `hwlm` command line to time instead of the default set")
    ap.add_argument("--json", help="also write the results to this JSON file")
    a = ap.parse_args()
    env = dict(os.environ)
    if a.src:
        env["PYTHONPATH"] = os.path.abspath(a.src)
    cache = tempfile.mkdtemp(prefix="hwlm-pyc-")
    if a.cold:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.pop("PYTHONPYCACHEPREFIX", None)
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = cache
    load_before = os.getloadavg()
    rows = []
    for cmd in a.command or COMMANDS:
        if not a.cold:
            _run(cmd, env)  # writes the byte-code cache
        runs = [_run(cmd, env) for _ in range(a.repeat)]
        cpu, wall = [r[0] for r in runs], [r[1] for r in runs]
        rows.append({"command": f"hwlm {cmd}", "cpu_min_s": min(cpu), "cpu_median_s": statistics.median(cpu),
                     "wall_min_s": min(wall), "wall_median_s": statistics.median(wall)})
    load_after = os.getloadavg()
    print(f"{'CPU min':>8} {'median':>7} {'wall min':>9} {'median':>7}  command")
    for r in rows:
        print(f"{r['cpu_min_s']:>7.3f}s {r['cpu_median_s']:>6.3f}s {r['wall_min_s']:>8.3f}s {r['wall_median_s']:>6.3f}s"
              f"  {r['command']}")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    print(f"{a.repeat} runs each, byte-code cache {'off' if a.cold else 'warm'}, {machine}; load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"kind": "hwlm-plan-speed", "repeat": a.repeat, "cold": a.cold, "src": a.src,
                       "machine": machine, "load_before": load_before[0], "load_after": load_after[0],
                       "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
