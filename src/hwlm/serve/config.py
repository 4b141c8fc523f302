"""``ServeConfig``: every knob of ``hwlm serve``, torch-free so the CLI builds its parser fast.

    cfg = ServeConfig(run=Path("runs/train"), port=8000, api_keys=Path("hwlm-keys.json"))

Limits come in three layers: the engine (``max_num_seqs`` slots running, ``max_waiting`` queued,
``prefill_budget`` prompt tokens per step), each request (``request_timeout``, ``max_request_bytes``)
and each API key (``rate_requests``, ``rate_tokens`` per ``rate_window`` seconds, ``key_concurrency``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hwlm.config import option
from hwlm.errors import ConfigError

__all__ = ["ServeConfig"]


@dataclass
class ServeConfig:
    """Arguments of :func:`hwlm.serve.serve`; one docstring per field becomes ``--help``."""

    run: Path | None = option(None, "run folder (or one checkpoint folder) to serve: trained, compressed or distilled")
    backend: Literal["torch", "onnx", "auto"] = option(
        "torch", "inference back end: torch; onnx (--onnx, from `hwlm export --format onnx` of this run, run by "
                 "onnxruntime on the CPU); auto (with --onnx: torch for batches, onnxruntime for a lone row where it "
                 "times faster at start-up; without: torch)")
    onnx: Path | None = option(None, "ONNX export folder or model.onnx (with --backend onnx or auto)")
    device: str = option("cpu", "device: auto, cpu, cuda[:N], mps")
    key_file: Path | None = option(None, "data key of an encrypted run (hwlm train --encrypt), a 0600 file read by "
                                         "the engine process; default $HWLM_DATA_KEY")
    dtype: Literal["fp32", "bf16", "auto"] = option("fp32", "weights and KV-cache precision (bf16 on a CPU with "
                                                            "oneDNN bf16 keeps the KV cache and attention in fp32); auto "
                                                            "times a few batched decode steps in each at start-up and "
                                                            "keeps the faster")
    compile: bool = option(False, "a lone decoding row (one stream) runs a compiled step (torch.compile, fp32 on the "
                                  "CPU; compiled at start-up, seconds per context bucket; whichever of it and the "
                                  "eager step has timed faster lately runs); its sums run in another order, so after "
                                  "a near tie its greedy token can differ from a batched step's")
    host: str = option("127.0.0.1", "address to bind (loopback unless told otherwise)")
    port: int = option(8000, "TCP port (0 picks a free one; the address is printed)")
    api_keys: Path | None = option(Path("hwlm-keys.json"), "API keys file written by `hwlm keys add`")
    auth: bool = option(True, "require API keys; --no-auth serves without them (refused unless the host is loopback)")
    audit_log: Path | None = option(None, "append-only JSON Lines audit log, one HMAC-chained record per request")
    audit_key: Path | None = option(None, "audit HMAC key file, kept apart from the log (created 0600 if absent); "
                                          "its head file <key>.head sits beside it")
    audit_prompts: bool = option(False, "also write prompt text into the audit log")
    model_name: str | None = option(None, "model id shown by /v1/models (default: the run folder's name)")
    engine_threads: int = option(0, "the engine's torch threads; 0: every core this process may use, at most "
                                    "OMP_NUM_THREADS when set")
    lone_threads: int = option(0, "the engine's torch threads for a step of one row while nothing waits (a lone "
                                  "stream: the HTTP process then needs little); 0: every core (at most "
                                  "OMP_NUM_THREADS), and where that differs from --engine-threads the engine times "
                                  "lone steps at both counts and keeps the faster")
    max_num_seqs: int = option(32, "sequences decoded together (KV-cache slots)")
    max_waiting: int = option(64, "requests queued beyond the running ones before 503")
    prefill_budget: int = option(512, "prompt tokens prefilled per engine step (chunked beyond it)")
    request_timeout: float = option(600.0, "seconds a request may take, queue included")
    max_request_bytes: int = option(1 << 20, "largest request body accepted (413 beyond)")
    max_n: int = option(8, "largest n (choices per request)")
    max_logprobs: int = option(20, "largest top_logprobs / logprobs")
    rate_window: float = option(60.0, "seconds of the per-key rate windows")
    rate_requests: int = option(600, "requests per key per window (0 = no limit)")
    rate_tokens: int = option(1_000_000, "prompt+completion tokens per key per window (0 = no limit)")
    key_concurrency: int = option(32, "requests in flight per key (0 = no limit)")
    ssl_certfile: Path | None = option(None, "TLS certificate (PEM); with --ssl-keyfile serves HTTPS")
    ssl_keyfile: Path | None = option(None, "TLS private key (PEM)")

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "prefill_budget", "max_request_bytes", "max_n"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("engine_threads", "lone_threads", "max_waiting", "rate_requests", "rate_tokens", "key_concurrency", "max_logprobs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.rate_window <= 0 or self.request_timeout <= 0:
            raise ConfigError("rate_window and request_timeout must be > 0 seconds")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port must be in [0, 65535], got {self.port}")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ConfigError("TLS needs both --ssl-certfile and --ssl-keyfile")
        if self.audit_log is not None and self.audit_key is None:
            raise ConfigError("--audit-log needs --audit-key FILE (the HMAC key, kept apart from the log)")
        if self.backend == "onnx" and self.onnx is None:
            raise ConfigError("--backend onnx needs --onnx PATH (a folder made by `hwlm export --format onnx`)")
        if self.backend == "onnx" and self.dtype == "bf16":
            raise ConfigError("--backend onnx runs the export's own precision: drop --dtype bf16 (or use --backend torch)")
        if self.compile and self.backend != "torch":
            raise ConfigError("--compile is for the torch back end's lone row: use --backend torch, or drop --compile")
        if self.compile and self.dtype == "bf16":
            raise ConfigError("--compile runs the fp32 lone step: use --dtype fp32 or auto, or drop --compile")
        if self.onnx is not None and self.backend == "torch":
            raise ConfigError("--onnx is for --backend onnx or auto: add --backend onnx|auto, or drop --onnx")
        if not self.auth and self.host not in ("127.0.0.1", "localhost", "::1"):
            raise ConfigError(f"--no-auth is refused on {self.host}: bind 127.0.0.1 or give --api-keys FILE")
