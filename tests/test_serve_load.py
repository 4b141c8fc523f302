"""``hwlm serve`` under load and faults: 32 concurrent streams, a full queue (503), a deadline, a client
that disconnects (its slot freed, seen through /metrics), and the server killed mid-stream."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi", reason="pip install 'hwlm[serve]'")
openai = pytest.importorskip("openai", reason="pip install openai")

from hwlm.serve.audit import verify_log  # noqa: E402
from serve_helpers import MODEL, Server, start_server  # noqa: E402

# Tokens: a stream that lasts about a second on the debug model. Greedy, because sampling would draw the
# end-of-text token (1 in ~300) long before.
LONG = 2000


@pytest.fixture()
def server(serve_server: Server) -> Server:
    return serve_server  # conftest.py: one server for the API, load and browser tests


@pytest.fixture(scope="module")
def narrow(serve_run: Path, tmp_path_factory: pytest.TempPathFactory):
    """Eight slots, no waiting room, a 2 s deadline. Each engine step pauses 5 ms (a test hook), so LONG steps
    take 10 s or more on any machine: the deadline fires, and a long request holds every slot while it runs."""
    s = start_server(serve_run, tmp_path_factory.mktemp("serve-narrow"), "--max-num-seqs", "8", "--max-waiting", "0",
                     "--request-timeout", "2", env={"HWLM_TEST_STEP_PAUSE": "0.005"})
    s.client().completions.create(model=MODEL, prompt="x", max_tokens=2)  # warm: a cold first step is slow
    yield s
    s.stop()


def _poll(what, limit: float = 20.0) -> float:
    """Seconds until ``what()`` holds; fails after ``limit``."""
    start = time.monotonic()
    while not what():
        assert time.monotonic() - start < limit, "condition not reached in time"
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.mark.slow
def test_32_concurrent_streaming_clients_no_errors_no_truncation(server: Server) -> None:
    client = server.client()

    def one(i: int) -> tuple[int, int, str | None]:
        stream = client.completions.create(model=MODEL, prompt=["The cat", "A dog", "Because it"][i % 3],
                                           max_tokens=16, temperature=0.7, seed=i, stream=True,
                                           stream_options={"include_usage": True})
        finishes, usage = [], None
        for chunk in stream:
            finishes += [c.finish_reason for c in chunk.choices if c.finish_reason]
            usage = chunk.usage or usage
        return len(finishes), usage.completion_tokens if usage else -1, finishes[0] if finishes else None

    with ThreadPoolExecutor(32) as pool:  # 32 clients x 10 requests, all on loopback
        results = list(pool.map(one, range(320), timeout=240))
    assert all(n == 1 for n, _, _ in results), "a stream ended without exactly one finish_reason"
    assert all(1 <= toks <= 16 for _, toks, _ in results)
    assert all(r in ("stop", "length") for _, _, r in results)
    _poll(lambda: server.metric("hwlm:num_requests_running") == 0)


def test_disconnected_client_frees_its_slots(server: Server) -> None:
    aborted = server.metric('hwlm:request_success_total{finished_reason="abort"') if False else None
    before = _aborts(server)
    body = {"model": MODEL, "prompt": "The cat", "max_tokens": LONG, "n": 8, "stream": True, "temperature": 0}
    with httpx.stream("POST", server.base + "/completions", json=body, headers=server.headers(), timeout=30) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                break  # the first tokens arrived: all 8 choices hold slots; now hang up
    seconds = _poll(lambda: server.metric("hwlm:num_requests_running") == 0)
    assert _aborts(server) == before + 8, "the choices ran to their end instead of being aborted"
    print(f"slots freed {seconds:.2f} s after the client hung up")


def _aborts(server: Server) -> float:
    text = httpx.get(server.url + "/metrics", headers=server.headers()).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("hwlm:request_success_total{") and 'finished_reason="abort"' in line)


def test_full_queue_is_503_with_retry_after(narrow: Server) -> None:
    body = {"model": MODEL, "prompt": "The cat", "max_tokens": LONG, "n": 8, "stream": True, "temperature": 0}
    with httpx.stream("POST", narrow.base + "/completions", json=body, headers=narrow.headers(), timeout=30) as r:
        lines = r.iter_lines()  # kept: a dropped line iterator closes the response, i.e. hangs up
        next(line for line in lines if line.startswith("data: {"))  # it holds every slot now
        busy = httpx.post(narrow.base + "/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2},
                          headers=narrow.headers())
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
    assert busy.json()["error"]["code"] == "server_busy"
    _poll(lambda: narrow.metric("hwlm:num_requests_running") == 0)
    ok = narrow.client().completions.create(model=MODEL, prompt="x", max_tokens=2)
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_deadline_ends_a_long_request_with_length(narrow: Server) -> None:
    _poll(lambda: narrow.metric("hwlm:num_requests_running") == 0)
    got = narrow.client().completions.create(model=MODEL, prompt="The cat", max_tokens=LONG, temperature=0, n=8)
    assert all(c.finish_reason == "length" for c in got.choices) and got.usage.completion_tokens < 8 * LONG
    time.sleep(0.3)
    last = json.loads((narrow.folder / "audit.jsonl").read_text().splitlines()[-1])
    assert last["finish_reason"] == "deadline"


def test_server_killed_mid_stream_gives_a_clean_error_and_a_restart_serves(narrow: Server, serve_run: Path) -> None:
    client = narrow.client()
    stream = client.completions.create(model=MODEL, prompt="The cat", max_tokens=LONG, stream=True, temperature=0)
    first = next(iter(stream))
    assert first.id
    narrow.proc.kill()  # SIGKILL: no graceful shutdown
    narrow.proc.wait(timeout=10)
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        for _ in stream:
            pass
    again = start_server(serve_run, narrow.folder, key=narrow.key)
    try:
        assert again.client().completions.create(model=MODEL, prompt="x", max_tokens=2).choices
    finally:
        again.stop()
    # The log written by the killed server and then the new one still verifies.
    assert verify_log(narrow.folder / "audit.jsonl", narrow.folder / "audit.key").ok
