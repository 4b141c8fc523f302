"""``serve(cfg)``: start the engine process (it loads the run), then the HTTP server, until interrupted.

    from hwlm.serve import ServeConfig, serve
    serve(ServeConfig(run=Path("runs/train"), port=8000, api_keys=Path("hwlm-keys.json")))

The socket is bound here, before uvicorn starts, so a port in use is one clear error, and
``port=0`` picks a free port; the address is printed (``hwlm serve: ... on http://HOST:PORT``)
once the server accepts connections.
"""

from __future__ import annotations

import errno
import socket
import sys
from pathlib import Path
from typing import Any, Callable

from hwlm.errors import CheckpointError, ConfigError, HwlmError, ResourceError
from hwlm.serve.config import ServeConfig

__all__ = ["serve", "build_state"]


def _require_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"hwlm serve needs {exc.name}: pip install 'hwlm[serve]'") from None


def build_state(cfg: ServeConfig) -> Any:
    """Everything the app needs: the engine process (started, model loaded), keys, limits, audit, metrics.

    The HTTP process itself loads only the tokenizer (to encode prompts and render chats); torch stays
    out of it unless something else brought it in, and then keeps one thread.
    """
    _require_extra()
    from hwlm.data import load_tokenizer
    from hwlm.data.normalize import normalize
    from hwlm.serve.api import ServerState
    from hwlm.serve.audit import AuditLog
    from hwlm.serve.chat import load_chat_template
    from hwlm.serve.engine.client import EngineClient
    from hwlm.serve.keys import KeyStore, list_keys
    from hwlm.serve.limits import RateLimiter
    from hwlm.serve.metrics import ServeMetrics

    if cfg.run is None:
        raise ConfigError("give the run to serve: --run RUN_FOLDER")
    if not Path(cfg.run).is_dir():
        raise CheckpointError(f"run folder {cfg.run} does not exist: give a folder made by `hwlm train`")
    if cfg.onnx is not None and not Path(cfg.onnx).exists():
        raise CheckpointError(f"{cfg.onnx} does not exist: export the run with "
                              f"`hwlm export --run {cfg.run} --format onnx --out DIR` and give --onnx DIR")
    keystore = None if not cfg.auth else KeyStore(Path(cfg.api_keys or "hwlm-keys.json"))
    if keystore is not None and not keystore.path.is_file():
        raise ConfigError(f"API keys file {keystore.path} does not exist: create a key with "
                          f"`hwlm keys add NAME --file {keystore.path}`, or serve with --no-auth on loopback")
    if keystore is not None:
        list_keys(keystore.path)  # a malformed file is one clear error now, not a server that refuses everyone
    audit = AuditLog(Path(cfg.audit_log), Path(cfg.audit_key)) if cfg.audit_log else None
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)  # the cores are the engine process's
    engine = EngineClient.start(cfg)
    info = engine.info
    checkpoint = Path(info["checkpoint"])
    prep = (info["run_config"] or {}).get("data", {}).get("prepare", {})
    tok = load_tokenizer(checkpoint)

    def encode(text: str) -> list[int]:
        # The same normalization and encoding as `hwlm generate` (hwlm.train.load.stream_text).
        text = normalize(text, prep.get("normalize", "nfkc"), prep.get("strip_control", True)) if text else ""
        return tok.encode(text, add_special_tokens=False).ids if text else []

    eot_id = info["eot_id"]
    eos = tok.id_to_token(eot_id) if eot_id is not None else ""
    template = load_chat_template([checkpoint, Path(cfg.run)], eos or "")
    name = cfg.model_name or Path(cfg.run).resolve().name
    metrics = ServeMetrics(name, engine.counts, engine.kv_usage, engine.threads)
    engine.metrics = metrics
    limiter = RateLimiter(cfg.rate_window, cfg.rate_requests, cfg.rate_tokens, cfg.key_concurrency)
    return ServerState(cfg=cfg, engine=engine, tokenizer=tok, encode=encode, model_name=name,
                       context=engine.context, chat_template=template, limiter=limiter, keystore=keystore,
                       audit=audit, metrics=metrics)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ResourceError(f"port {port} on {host} is in use: pick another with --port "
                                "(0 picks a free one) or stop the other server") from None
        raise ResourceError(f"cannot bind {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _compiled_note(found: dict | None) -> str:
    """What ``--compile`` found at start-up, for the ready line ("" without it)."""
    if not found:
        return ""
    if not found["compiled"]:
        return f"; --compile not used: {found['why']}"
    ms = found["lone_ms"]
    return (f"; lone row compiled in {found['compile_s']:.0f} s, {ms['compiled']:.2f} against {ms['eager']:.2f} ms "
            f"eager at start-up, the faster of the two kept as it runs")


def serve(cfg: ServeConfig, ready: Callable[[str], None] | None = None) -> None:
    """Serve ``cfg.run`` until SIGINT/SIGTERM; ``ready(line)`` is called with the address once it listens."""
    _require_extra()  # before anything else: without hwlm[serve] one line, not a traceback
    import uvicorn

    from hwlm.serve.api import create_app

    for f in (cfg.ssl_certfile, cfg.ssl_keyfile):
        if f is not None and not Path(f).is_file():
            raise ConfigError(f"TLS file {f} does not exist: give a PEM certificate and key")
    sock = _bind(cfg.host, cfg.port)  # first: a port in use fails before the model loads
    try:
        state = build_state(cfg)
    except BaseException:
        sock.close()
        raise
    app = create_app(state)
    host, port = sock.getsockname()[:2]
    scheme = "https" if cfg.ssl_certfile else "http"
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2,
                            ssl_certfile=str(cfg.ssl_certfile) if cfg.ssl_certfile else None,
                            ssl_keyfile=str(cfg.ssl_keyfile) if cfg.ssl_keyfile else None)
    server = uvicorn.Server(config)
    url = f"{scheme}://{host if ':' not in host else f'[{host}]'}:{port}"

    # The socket already listens, so a client that reads this line and connects at once waits in
    # the backlog until uvicorn accepts: no race.
    if ready is not None:
        info = state.engine.info
        ready(f"hwlm serve: {state.model_name} (context {state.context}, {info['backend']} {info['dtype']}, engine "
              f"process {info['pid']} with {info['threads']} threads{_compiled_note(info.get('compiled'))}) on {url}")
    try:
        server.run(sockets=[sock])
    except HwlmError:
        raise
    except SystemExit as exc:  # uvicorn exits on a startup failure (a bad TLS file, ...)
        raise ConfigError(f"the HTTP server did not start (exit {exc.code}); see the lines above") from None
    finally:
        state.engine.stop()
        sock.close()
