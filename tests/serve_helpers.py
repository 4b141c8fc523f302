"""Start ``hwlm serve`` as a real subprocess on a free loopback port: ``from serve_helpers import start_server``.

The server is started with ``--port 0`` and prints the address it bound, so there is no race for a
port; ``start_server`` returns once ``/health`` answers. Every test talks to 127.0.0.1 only.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from hwlm.serve.keys import add_key

MODEL = "tiny"


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    key: str
    folder: Path
    verify: Any = True  # an ssl.SSLContext trusting a TLS server's certificate
    ready: str = ""  # the line it printed with its address

    @property
    def base(self) -> str:
        return self.url + "/v1"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def client(self, **kw):
        import openai

        return openai.OpenAI(base_url=self.base, api_key=self.key, max_retries=0, timeout=60,
                             http_client=httpx.Client(verify=self.verify), **kw)

    def metric(self, name: str) -> float:
        """Sum of a metric's samples in /metrics (all label sets)."""
        text = httpx.get(self.url + "/metrics", headers=self.headers(), timeout=10, verify=self.verify).text
        total, seen = 0.0, False
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
                seen = True
        assert seen, f"{name} is not in /metrics"
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_server(run: Path, folder: Path, *args: str, key: str | None = None, timeout: float = 120,
                 verify: Any = True, env: dict[str, str] | None = None) -> Server:
    """``hwlm serve --run RUN`` with a fresh keys file (and audit log) in ``folder``, ready for requests."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = folder / "keys.json"
    if key is None:
        key, _ = add_key(keys, f"test-{len(list(folder.iterdir()))}")
    cmd = [sys.executable, "-m", "hwlm", "serve", "--run", str(run), "--port", "0", "--api-keys", str(keys),
           "--model-name", MODEL, "--audit-log", str(folder / "audit.jsonl"), "--audit-key",
           str(folder / "audit.key"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    err = open(folder / "server.err", "ab")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    err.close()
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l) for l in proc.stdout], daemon=True).start()  # noqa: E741
    deadline = time.monotonic() + timeout
    url = ready = None
    while url is None:
        if proc.poll() is not None:
            raise RuntimeError(f"hwlm serve exited {proc.returncode}: {(folder / 'server.err').read_text()[-2000:]}")
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("hwlm serve printed no address in time") from None
            continue
        if " on http" in line:
            url, ready = line.rsplit(" on ", 1)[1].strip(), line.strip()
    server = Server(proc, url, key, folder, verify, ready)
    while True:
        try:
            if httpx.get(url + "/health", timeout=5, verify=verify).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError("hwlm serve did not answer /health in time")
        time.sleep(0.1)


def make_serve_run(root: Path) -> Path:
    """A debug-preset run with a 2048-token context (room for chats and for streams long enough to
    interrupt), on a corpus large enough for that window; a few seconds to build."""
    from hwlm.data import PrepareConfig, prepare
    from hwlm.model import ModelConfig
    from hwlm.train import train
    from tiny import tiny_cfg, write_corpus

    write_corpus(root / "text", n_docs=900, seed=1)
    data = root / "data"
    prepare(PrepareConfig(inputs=[str(root / "text")], out=data, vocab_size=300, val_fraction=0.2, seed=0))
    out = root / "run"
    train(tiny_cfg(data, out, max_steps=16, batch_size=2, ckpt_interval=16, eval_interval=16, eval_batches=1),
          ModelConfig.from_name("debug", block_size=2048))
    return out
