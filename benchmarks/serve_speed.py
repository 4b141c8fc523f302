"""Serving speed: ``hwlm serve`` against ``transformers serve --continuous-batching``, same model, same load.

For each model (``tiny`` = the quickstart's preset, ``mid``), the same weights are served by hwlm
and, exported to Hugging Face format (``hwlm.export.hf``), by ``transformers serve`` (the Hugging
Face server), one after the other. The same client load drives both: the official ``openai``
client, streaming, greedy, ``--requests`` requests of ``--tokens`` new tokens, at 1, 8 and 32
concurrent clients. Reported per server and concurrency: aggregate completion tokens/s (tokens
delivered / wall time of the batch), time to first token p50/p95, inter-token latency p50, errors,
truncated streams (no finish_reason), the cores each process used (``cpu_share``: CPU seconds per
second of the run for hwlm's HTTP process, its engine process and this client; 2.0 is both cores
of a 2-core machine); and the ratios hwlm / transformers, and hwlm at 32 clients
over hwlm at 1 client (its own sequential throughput).

    flock /tmp/hwlm-bench.lock .venv/bin/python benchmarks/serve_speed.py
    .venv/bin/python benchmarks/serve_speed.py --models tiny --concurrency 1,8 --requests 16 --no-peer

``--hwlm-dtypes fp32,bf16,auto`` gives hwlm rows in fp32 (the like-for-like row), bf16 (weights and KV
cache) and ``auto`` (the precision hwlm serve picks by timing both at start-up; the row's ``chosen``
says which); ``--onnx`` adds ``hwlm serve --backend onnx`` on the same weights, exported once, and
``hwlm-hybrid``: ``--backend auto --dtype auto --onnx`` (torch batches, onnxruntime for a lone row).
``--servers`` picks the servers instead (an A/B, or one configuration against the peer), with one more:
``hwlm-hybrid-spin``, the hybrid with onnxruntime's threads spin-waiting between calls too (its default;
``HWLM_ONNX_SPIN=always``), against the hybrid's threads that sleep once a call returns.
The models have 2 training steps: speed does not depend on what the weights say, and both servers
decode the same greedy tokens. The machine's load average is printed before and after: on a shared
machine the client, the server and other work compete for the same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["The cat sat on the", "A dog ran to the park while", "Because it was a warm day", "The bird sang over"]


def build(root: Path, preset: str) -> tuple[Path, Path]:
    """(hwlm run, HF export) of a 2-step ``preset`` run, built once under ``root``."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import tiny_cfg, write_corpus

    from hwlm.data import PrepareConfig, prepare
    from hwlm.export.hf import export_hf
    from hwlm.model import ModelConfig
    from hwlm.train import train
    from hwlm.train.load import load_model

    data, run, hf = root / "data", root / preset, root / f"{preset}-hf"
    if not (data / "manifest.json").exists():
        write_corpus(root / "text", n_docs=900, seed=1)
        prepare(PrepareConfig(inputs=[str(root / "text")], out=data, vocab_size=2048, val_fraction=0.2, seed=0))
    if not (hf / "config.json").exists():
        # tiny as the quickstart trains it (a 2048-token vocabulary); mid with its preset's padded GPT-2 vocabulary.
        vocab = 2048 if preset == "tiny" else ModelConfig.from_name(preset).vocab_size
        train(tiny_cfg(data, run, max_steps=2, batch_size=2, ckpt_interval=2, eval_interval=2, eval_batches=1),
              ModelConfig.from_name(preset, vocab_size=vocab))
        loaded = load_model(run)
        export_hf(loaded.model, loaded.model_cfg, loaded.path / "tokenizer.json", hf)
    return run, hf


class Proc:
    """A server subprocess, waited for on /health, stopped on exit."""

    def __init__(self, cmd: list[str], url: str | None, log: Path, env: dict[str, str]) -> None:
        self.log, self.ready = open(log, "w"), ""
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        if url is None:  # hwlm serve --port 0 prints its address
            for line in self.proc.stdout:
                if " on http" in line:
                    url, self.ready = line.rsplit(" on ", 1)[1].strip(), line.strip()
                    break
            threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        self.url = url
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited {self.proc.returncode}; see {log}")
            try:
                if url and httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd} did not come up; see {log}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def free_port() -> int:
    """A port free right now (transformers serve takes no --port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_stream(client, model: str, prompt: str, tokens: int) -> dict:
    start = time.perf_counter()
    times, usage, finish = [], None, None
    stream = client.completions.create(model=model, prompt=prompt, max_tokens=tokens, temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    for chunk in stream:
        now = time.perf_counter()
        for c in chunk.choices:
            if c.text:
                times.append(now)
            finish = c.finish_reason or finish
        usage = chunk.usage or usage
    n = usage.completion_tokens if usage else len(times)
    return {"tokens": n, "ttft": times[0] - start if times else None, "gaps": [b - a for a, b in zip(times, times[1:])],
            "finish": finish, "wall": time.perf_counter() - start}


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of server process ``pid`` and of its engine process (hwlm's
    spawned child), from Linux /proc (empty elsewhere): where a run's cores went, HTTP apart from engine."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def one(p: int) -> float:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    try:
        out = {"server": one(pid)}
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            if "spawn_main" in Path(f"/proc/{child}/cmdline").read_text():  # not the resource tracker
                out["engine"] = one(int(child))
        return out
    except (OSError, ValueError, IndexError):
        return {}


def load(url: str, model: str, concurrency: int, requests: int, tokens: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=300,
                           http_client=httpx.Client(limits=httpx.Limits(max_connections=64)))

    def job(i: int) -> dict:
        try:
            return one_stream(client, model, PROMPTS[i % len(PROMPTS)], tokens)
        except Exception as exc:  # counted, not raised: errors are part of the result
            return {"error": f"{type(exc).__name__}: {exc}"}

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(job, range(requests)))
    wall = time.perf_counter() - start
    ok = [r for r in results if "error" not in r]
    ttfts = sorted(r["ttft"] for r in ok if r["ttft"] is not None)
    gaps = sorted(g for r in ok for g in r["gaps"])

    def pct(xs: list[float], q: float) -> float | None:
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e3 if xs else None

    tokens_total = sum(r["tokens"] for r in ok)
    return {"concurrency": concurrency, "requests": requests, "tokens": tokens_total,
            "tokens_per_s": tokens_total / wall, "wall_s": wall, "ttft_ms_p50": pct(ttfts, 0.5),
            "ttft_ms_p95": pct(ttfts, 0.95), "itl_ms_p50": pct(gaps, 0.5),
            "errors": len(results) - len(ok), "truncated": sum(1 for r in ok if r["finish"] is None),
            "first_error": next((r["error"] for r in results if "error" in r), None)}


def run_server(kind: str, run: Path, hf: Path, threads: int, port: int, logs: Path, levels: list[int],
               requests: int, tokens: int, seq_requests: int, engine_threads: int = 0,
               lone_threads: int = 0) -> list[dict]:
    label = kind
    # Suffixes for A/B runs, in this order: -etN (--engine-threads N), -loneN (--lone-threads N);
    # e.g. hwlm-hybrid-et2, hwlm-hybrid-lone1, hwlm-hybrid-et2-lone1.
    lone = re.search(r"-lone(\d+)$", kind)
    if lone:
        kind, lone_threads = kind[:lone.start()], int(lone.group(1))
    et = re.search(r"-et(\d+)$", kind)
    if et:
        kind, engine_threads = kind[:et.start()], int(et.group(1))
    compiled = kind.endswith("-compile")  # hwlm-compile: torch fp32 with --compile (the lone row's compiled step)
    if compiled:
        kind = kind.removesuffix("-compile")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if kind.endswith("-spin"):
        env["HWLM_ONNX_SPIN"] = "always"
    if kind.startswith("hwlm"):
        variant = kind.split("-")[1] if "-" in kind else "fp32"
        how = (["--backend", "onnx", "--onnx", str(export_onnx_once(run))] if variant == "onnx" else
               ["--backend", "auto", "--dtype", "auto", "--onnx", str(export_onnx_once(run))] if variant == "hybrid"
               else ["--dtype", variant])
        cmd = [sys.executable, "-m", "hwlm", "serve", "--run", str(run), "--port", "0", "--no-auth",
               "--model-name", "m", "--max-num-seqs", "32", "--max-waiting", "256", *how,
               *(["--engine-threads", str(engine_threads)] if engine_threads else []),
               *(["--lone-threads", str(lone_threads)] if lone_threads else []),
               *(["--compile"] if compiled else [])]
        server, model = Proc(cmd, None, logs / f"{label}.log", env), "m"
    else:
        exe = str(Path(sys.executable).parent / "transformers")
        cmd = [exe, "serve", "--continuous-batching", "--device", "cpu", "--dtype", "float32", "--port", str(port),
               str(hf)]
        server, model = Proc(cmd, f"http://127.0.0.1:{port}", logs / "transformers.log", env), str(hf)
    try:
        load(server.url, model, 2, 4, tokens)  # warm-up: first-call costs (allocations, lazy imports)
        # One client is a sequential loop: fewer requests give the same steady rate in less time.
        # "hwlm serve: m (context 256, torch bf16, engine process ...) on URL": the back end and precision it chose
        found = re.search(r"\(context \d+, (.+?), engine process", server.ready)
        chosen = found.group(1) if found else ""
        rows = []
        for c in levels:
            before, client_before = cpu_seconds(server.proc.pid), time.process_time()
            row = load(server.url, model, c, requests if c > 1 else min(requests, seq_requests), tokens)
            after = cpu_seconds(server.proc.pid)
            # CPU seconds per second of the run: 2.0 is both cores of this machine
            row["cpu_share"] = {k: (after[k] - before.get(k, 0.0)) / row["wall_s"] for k in after} | {
                "client": (time.process_time() - client_before) / row["wall_s"]}
            rows.append({"server": label, "chosen": chosen, "ready": server.ready, **row})
        return rows
    finally:
        server.stop()


def export_onnx_once(run: Path) -> Path:
    """The run's fp32 ONNX export beside it (``hwlm export --format onnx``), made on first use."""
    out = run.parent / f"{run.name}-onnx"
    if not (out / "model.onnx").exists():
        from hwlm.export.onnx import export_onnx
        from hwlm.train.load import load_model

        loaded = load_model(run)
        export_onnx(loaded.model, out, loaded.path / "tokenizer.json")
    return out


def markdown(record: dict, levels: list[int]) -> str:
    """The docs/benchmarks.md table: per model and server, tokens/s, TTFT and ITL at each concurrency."""
    rows = {(r["model"], r["server"], r.get("round", 0), r["concurrency"]): r for r in record["rows"]}
    rounds = len({r.get("round", 0) for r in record["rows"]})
    head = " / ".join(str(c) for c in levels)
    out = [f"| model | server | tokens/s at {head} clients | TTFT p50/p95 ms at {head.replace(' / ', ' · ')} "
           f"| ITL p50 ms at {head} "
           f"| errors, truncated |", "|---|---|---|---|---|---|"]
    for model, server, rnd in dict.fromkeys((r["model"], r["server"], r.get("round", 0)) for r in record["rows"]):
        cells = [rows[model, server, rnd, c] for c in levels if (model, server, rnd, c) in rows]
        fmt = lambda v, d=0: "-" if v is None else f"{v:,.{d}f}"  # noqa: E731
        label = f"{server} ({cells[0]['chosen']})" if cells and cells[0].get("chosen") else server
        label += f", round {rnd + 1}" if rounds > 1 else ""
        out.append(f"| {model} | {label} | {' / '.join(fmt(r['tokens_per_s']) for r in cells)} | "
                   f"{' · '.join(fmt(r['ttft_ms_p50']) + '/' + fmt(r['ttft_ms_p95']) for r in cells)} | "
                   f"{' / '.join(fmt(r['itl_ms_p50'], 1) for r in cells)} | "
                   f"{sum(r['errors'] for r in cells)}, {sum(r['truncated'] for r in cells)} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="tiny,mid")
    ap.add_argument("--tokens", default="tiny=48,mid=64", help="new tokens per request, per model")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--sequential-requests", type=int, default=8, help="requests at 1 client (a sequential loop)")
    ap.add_argument("--threads", type=int, default=2, help="OMP threads of each server (OMP_NUM_THREADS: "
                    "transformers' threads; for hwlm a cap on its engine's default, the cores less one)")
    ap.add_argument("--engine-threads", type=int, default=0, help="hwlm serve --engine-threads (0: its default)")
    ap.add_argument("--lone-threads", type=int, default=0, help="hwlm serve --lone-threads (0: its default)")
    ap.add_argument("--no-peer", action="store_true", help="skip transformers serve")
    ap.add_argument("--hwlm-dtypes", default="fp32,bf16,auto",
                    help="precisions of hwlm serve (fp32 is like for like; auto: hwlm picks by timing)")
    ap.add_argument("--onnx", action="store_true", help="add hwlm serve --backend onnx and --backend auto --onnx")
    ap.add_argument("--servers", default="", help="these servers instead, in this order: hwlm (torch fp32), hwlm-bf16, "
                    "hwlm-auto, hwlm-onnx, hwlm-hybrid, hwlm-hybrid-spin, transformers; suffixes -compile, -etN and "
                    "-loneN give that hwlm server --compile, --engine-threads N and --lone-threads N (hwlm-compile, "
                    "hwlm-hybrid-et2, hwlm-hybrid-lone1)")
    ap.add_argument("--rounds", type=int, default=1, help="run the servers in turn this many times; ratios per "
                    "round and their median")
    ap.add_argument("--root", type=Path, default=ROOT / "runs" / "serve-bench")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "serve_speed.json")
    a = ap.parse_args()
    levels = [int(c) for c in a.concurrency.split(",")]
    tokens = dict(kv.split("=") for kv in a.tokens.split(","))
    a.root.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    record = {"benchmark": "serve_speed", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "python": platform.python_version()},
              "load_before": load_before, "config": vars(a) | {"root": str(a.root), "out": str(a.out)}, "rows": []}
    for name in a.models.split(","):
        run, hf = build(a.root, name)
        n = int(tokens.get(name, 48))
        kinds = ["hwlm"] + [f"hwlm-{d}" for d in a.hwlm_dtypes.split(",") if d and d != "fp32"]
        kinds += ["hwlm-onnx", "hwlm-hybrid"] if a.onnx else []
        kinds += [] if a.no_peer else ["transformers"]
        for rnd in range(a.rounds):  # the servers in turn, round after round: a drift in the machine hits all
            for kind in a.servers.split(",") if a.servers else kinds:
                for row in run_server(kind, run, hf, a.threads, free_port(), a.root, levels, a.requests, n,
                                      a.sequential_requests, a.engine_threads, a.lone_threads):
                    row.update(model=name, new_tokens=n, round=rnd)
                    record["rows"].append(row)
                    print(f"{name:5s} {kind:12s} c={row['concurrency']:3d} {row['tokens_per_s']:8.1f} tok/s  TTFT p50 "
                          f"{row['ttft_ms_p50'] or 0:7.1f} p95 {row['ttft_ms_p95'] or 0:7.1f} ms  ITL p50 "
                          f"{row['itl_ms_p50'] or 0:6.1f} ms  errors {row['errors']} truncated {row['truncated']}  "
                          "cores: " + " ".join(f"{k} {v:.2f}" for k, v in row["cpu_share"].items()), flush=True)
    record["load_after"] = os.getloadavg()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(record, indent=2) + "\n")
    rows = {(r["model"], r["server"], r["concurrency"], r["round"]): r for r in record["rows"]}
    print(f"\nload average {load_before[0]:.2f} before, {record['load_after'][0]:.2f} after; {os.cpu_count()} cores")
    for name in a.models.split(","):
        for c in levels:
            for kind in dict.fromkeys(r["server"] for r in record["rows"] if r["server"].startswith("hwlm")):
                ratios = [h["tokens_per_s"] / t["tokens_per_s"] for rnd in range(a.rounds)
                          if (h := rows.get((name, kind, c, rnd))) and (t := rows.get((name, "transformers", c, rnd)))]
                if ratios:  # each round's ratio is of two servers run minutes apart; the median of the rounds
                    each = f" (rounds: {', '.join(f'{x:.2f}x' for x in ratios)})" if len(ratios) > 1 else ""
                    print(f"{name} c={c}: {kind}/transformers {statistics.median(ratios):.2f}x{each}")
        h1, h32 = rows.get((name, "hwlm", levels[0], 0)), rows.get((name, "hwlm", levels[-1], 0))
        if h1 and h32:
            print(f"{name}: hwlm at {levels[-1]} clients / at {levels[0]}: {h32['tokens_per_s'] / h1['tokens_per_s']:.2f}x")
    print("\n" + markdown(record, levels))
    print(f"record: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
