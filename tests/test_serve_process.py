"""The engine in its own process: the HTTP process stays torch-free, an engine that dies is reported
(``/health`` 503, a clean stream error, 503 for new requests) instead of hanging, a bad run is one
line from the child, ``--backend onnx`` serves the same greedy text as torch fp32, and ``--backend auto``'s
hybrid (onnxruntime for a lone row, torch for batches) keeps one slot cache both can continue from."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

pytest.importorskip("fastapi", reason="pip install 'hwlm[serve]'")
openai = pytest.importorskip("openai", reason="pip install openai")

from hwlm.cli import main  # noqa: E402
from serve_helpers import MODEL, Server, start_server  # noqa: E402


def _engine_pid(server: Server) -> int:
    (child,) = [c for c in psutil.Process(server.proc.pid).children() if "spawn_main" in " ".join(c.cmdline())]
    return child.pid


def _maps_torch(pid: int) -> bool:
    return "libtorch_cpu" in Path(f"/proc/{pid}/maps").read_text()


def test_the_model_lives_in_the_engine_process_only(serve_server: Server) -> None:
    engine = _engine_pid(serve_server)
    assert _maps_torch(engine), "the engine process should hold torch and the model"
    assert not _maps_torch(serve_server.proc.pid), "the HTTP process loaded torch: the GIL is shared again"
    got = serve_server.client().completions.create(model=MODEL, prompt="The cat", max_tokens=4, temperature=0)
    assert got.usage.completion_tokens >= 1


def test_a_killed_engine_is_reported_not_a_hang(serve_run: Path, tmp_path: Path) -> None:
    server = start_server(serve_run, tmp_path / "dying")
    try:
        client = server.client()
        stream = client.completions.create(model=MODEL, prompt="The cat", max_tokens=2000, stream=True, temperature=0)
        assert next(iter(stream)).id
        os.kill(_engine_pid(server), signal.SIGKILL)
        with pytest.raises((openai.APIError, httpx.HTTPError)):
            for _ in stream:  # the stream ends with an error event, not silence
                pass
        deadline = time.monotonic() + 20
        while httpx.get(server.url + "/health", timeout=5).status_code != 503:
            assert time.monotonic() < deadline, "/health still says ok after the engine died"
            time.sleep(0.1)
        assert "engine process exited" in httpx.get(server.url + "/health", timeout=5).json()["error"]
        busy = httpx.post(server.base + "/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2},
                          headers=server.headers(), timeout=10)
        assert busy.status_code == 503 and busy.json()["error"]["code"] == "engine_down"
    finally:
        server.stop()
    assert server.proc.returncode is not None


def test_the_engine_process_leaves_with_a_killed_server(serve_run: Path, tmp_path: Path) -> None:
    server = start_server(serve_run, tmp_path / "orphan")
    engine = psutil.Process(_engine_pid(server))
    server.proc.kill()  # SIGKILL: the parent cannot stop its child, the closed pipe must
    server.proc.wait(timeout=10)
    engine.wait(timeout=20)  # raises psutil.TimeoutExpired if the engine outlives its server


def test_a_folder_that_is_not_a_run_is_one_line_from_the_engine(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["serve", "--run", str(tmp_path / "empty"), "--no-auth", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "checkpoint" in err.lower(), err


def test_backend_onnx_bad_input_is_one_line(tmp_path: Path, capsys) -> None:
    cases = [(["--backend", "onnx"], "--backend onnx needs --onnx"),
             (["--onnx", str(tmp_path)], "--onnx is for --backend onnx or auto"),
             (["--backend", "onnx", "--onnx", str(tmp_path / "none")], "does not exist")]
    for args, words in cases:
        assert main(["serve", "--run", str(tmp_path), "--no-auth", *args]) == 1
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_backend_onnx_serves_the_same_greedy_text_as_torch(serve_run: Path, serve_server: Server,
                                                           tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="pip install 'hwlm[onnx]'")
    from hwlm.export.onnx import export_onnx
    from hwlm.train.load import load_model

    loaded = load_model(serve_run)
    out = export_onnx(loaded.model, tmp_path / "onnx", loaded.path / "tokenizer.json")
    onnx = start_server(serve_run, tmp_path / "onnx-serve", "--backend", "onnx", "--onnx", str(out),
                        "--max-num-seqs", "4")
    try:
        prompts = ["The cat", "A dog ran to the park"]
        for prompt in prompts:
            want = serve_server.client().completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
            got = onnx.client().completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
            assert got.choices[0].text == want.choices[0].text and got.usage == want.usage
        # Both prompts at once (n=2 each: rows that share a length decode as one batch), streamed.
        texts = {}
        for prompt in prompts:
            stream = onnx.client().completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0, n=2,
                                                      stream=True)
            for chunk in stream:
                for c in chunk.choices:
                    texts[prompt, c.index] = texts.get((prompt, c.index), "") + c.text
        single = {p: serve_server.client().completions.create(model=MODEL, prompt=p, max_tokens=12,
                                                               temperature=0).choices[0].text for p in prompts}
        assert all(texts[p, i] == single[p] for p in prompts for i in (0, 1))
    finally:
        onnx.stop()


def test_hybrid_runner_lone_rows_in_onnx_and_batches_in_torch_share_the_cache(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="pip install 'hwlm[onnx]'")
    import torch

    from hwlm.export.onnx import OnnxModel, export_onnx
    from hwlm.model import ModelConfig, Transformer
    from hwlm.serve.engine.model_runner import ModelRunner
    from hwlm.serve.engine.onnx_runner import HybridRunner

    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("debug", vocab_size=300)).eval()
    hybrid = HybridRunner(ModelRunner(model, num_slots=3), OnnxModel.load(export_onnx(model, tmp_path / "x")))
    a, b = [5, 9, 17, 4], [3, 8]
    with torch.inference_mode():
        first = hybrid.step([(a, 0, 0)])  # alone: onnxruntime, its k/v written into slot 0
        hybrid.step([(b[:1], 2, 0)])  # alone again, slot 2
        both = hybrid.step([([20], 0, 4), (b[1:], 2, 1)])  # two rows: torch's packed step reads them
        lone = hybrid.step([([21], 0, 5)])  # and onnxruntime continues from what torch wrote
        for got, ids in ((first[0], a), (both[0], a + [20]), (both[1], b), (lone[0], a + [20, 21])):
            full, _ = model(torch.tensor([ids]))
            torch.testing.assert_close(got, full[0, -1], atol=1e-4, rtol=1e-4)


def test_backend_auto_with_an_export_serves_the_same_greedy_text(serve_run: Path, serve_server: Server,
                                                                tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="pip install 'hwlm[onnx]'")
    from hwlm.export.onnx import export_onnx
    from hwlm.train.load import load_model

    loaded = load_model(serve_run)
    out = export_onnx(loaded.model, tmp_path / "onnx", loaded.path / "tokenizer.json")
    auto = start_server(serve_run, tmp_path / "auto-serve", "--backend", "auto", "--onnx", str(out), "--max-num-seqs", "4")
    try:
        for prompt in ("The cat", "A dog ran to the park"):
            want = serve_server.client().completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
            got = auto.client().completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0, n=2)
            assert [c.text for c in got.choices] == [want.choices[0].text] * 2
            alone = auto.client().completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
            assert alone.choices[0].text == want.choices[0].text
    finally:
        auto.stop()


def test_compile_serves_a_lone_stream_with_generate_s_greedy_text(tiny_run: Path, tmp_path: Path) -> None:
    """``hwlm serve --compile``: the engine compiles the lone row's step at start-up (the ready line says so) and a
    lone greedy stream gives the text ``hwlm.model.generate`` gives on the same weights."""
    from hwlm.train.load import load_model, stream_text

    server = start_server(tiny_run, tmp_path / "compiled", "--compile", "--max-num-seqs", "2")
    try:
        assert "lone row compiled in" in server.ready and "the faster of the two kept" in server.ready
        loaded = load_model(tiny_run)
        for prompt in ("The cat", "A dog ran"):
            want = "".join(stream_text(loaded, prompt, 12, temperature=0))
            got = server.client().completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
            assert got.choices[0].text == want, prompt
    finally:
        server.stop()
