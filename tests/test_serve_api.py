"""``hwlm serve`` over HTTP, driven by the official ``openai`` client: OpenAI's semantics, exactly."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi", reason="pip install 'hwlm[serve]'")
openai = pytest.importorskip("openai", reason="pip install openai")

from serve_helpers import MODEL, Server  # noqa: E402


@pytest.fixture()
def server(serve_server: Server) -> Server:
    return serve_server  # conftest.py: one server for the API, load and browser tests


@pytest.fixture(scope="module")
def reference(serve_run: Path) -> dict[str, str]:
    """What `hwlm generate` prints after each prompt (its library path, in-process): greedy, and sampled
    with --temperature 0.8 --seed 5 (the same seed gives the same draws from the same logits)."""
    from hwlm.train.load import load_model, stream_text

    loaded = load_model(serve_run)
    prompts = ("The cat", "A dog ran", "Because")
    return {(p, t): "".join(stream_text(loaded, p, 14, temperature=t, seed=5)) for p in prompts for t in (0.0, 0.8)}


def test_health_is_public_and_models_lists_the_run(server: Server) -> None:
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert [m.id for m in server.client().models.list().data] == [MODEL]


def test_completion_equals_hwlm_generate_alone_and_in_a_batch(server: Server, reference) -> None:
    client = server.client()

    def ask(case: tuple[str, float]) -> str:
        return client.completions.create(model=MODEL, prompt=case[0], max_tokens=14, temperature=case[1],
                                         seed=5).choices[0].text

    for case, want in reference.items():
        assert ask(case) == want, case
    with ThreadPoolExecutor(8) as pool:  # 24 at once: the batch holds other requests, the text must not move
        got = list(pool.map(ask, list(reference) * 4))
    assert got == list(reference.values()) * 4
    streamed = client.completions.create(model=MODEL, prompt="The cat", max_tokens=14, temperature=0.8, seed=5,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == reference["The cat", 0.8]


def test_completion_stream_ids_finish_reasons_and_usage(server: Server) -> None:
    chunks = list(server.client().completions.create(
        model=MODEL, prompt="The cat", max_tokens=6, temperature=0.8, seed=1, n=2, stream=True,
        stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1
    finishes = [(ch.index, ch.finish_reason) for c in chunks for ch in c.choices if ch.finish_reason]
    assert sorted(i for i, _ in finishes) == [0, 1]  # exactly one finish_reason per choice
    assert all(r in ("stop", "length") for _, r in finishes)
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    one = server.client().completions.create(model=MODEL, prompt="The cat", max_tokens=1)
    assert last.usage.completion_tokens <= 12 and last.usage.prompt_tokens == 2 * one.usage.prompt_tokens  # n=2
    assert all(c.usage is None for c in chunks[:-1])


def test_raw_stream_ends_with_done(server: Server) -> None:
    body = {"model": MODEL, "prompt": "The", "max_tokens": 3, "stream": True}
    with httpx.stream("POST", server.base + "/completions", json=body, headers=server.headers()) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)


def test_chat_multi_turn_stream_and_not(server: Server) -> None:
    client = server.client()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The cat"},
                {"role": "assistant", "content": "sat on a mat."}, {"role": "user", "content": "And the dog?"}]
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, stream=True,
                                                 temperature=0, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c for c in chunks[1:] if c.choices and c.choices[0].delta.role] == []
    assert sum(1 for c in chunks for ch in c.choices if ch.finish_reason) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, temperature=0)
    assert whole.choices[0].message.role == "assistant" and whole.choices[0].message.content == text
    assert whole.usage.completion_tokens == chunks[-1].usage.completion_tokens
    assert "\nUser:" not in text  # the default template's stop string


def test_stop_string_excluded_streamed_and_not(server: Server, reference) -> None:
    full = reference["The cat", 0.8]
    stop = full[len(full) // 2:len(full) // 2 + 2]
    assert len(full) >= 6 and stop.strip(), f"the reference text {full!r} is too short to pick a stop string"
    want = full[:full.index(stop)]
    client = server.client()
    sample = dict(model=MODEL, prompt="The cat", max_tokens=14, temperature=0.8, seed=5)
    got = client.completions.create(**sample, stop=[stop, "zzz"])
    assert got.choices[0].text == want and got.choices[0].finish_reason == "stop"
    pieces = [c.choices[0].text for c in client.completions.create(**sample, stop=stop, stream=True) if c.choices]
    assert "".join(pieces) == want
    sent = ""
    for p in pieces:  # no prefix of the stop string was ever sent ahead of it
        sent += p
        assert not any(sent.endswith(stop[:k]) for k in range(1, len(stop))) or sent == want


def test_seed_repeats_and_n_gives_n_choices(server: Server) -> None:
    client = server.client()
    ask = lambda: client.completions.create(model=MODEL, prompt="The", max_tokens=8, temperature=1.0,  # noqa: E731
                                            top_p=0.9, seed=42, n=3)
    a, b = ask(), ask()
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert [c.index for c in a.choices] == [0, 1, 2]


def test_logprobs_with_a_cap(server: Server) -> None:
    client = server.client()
    got = client.completions.create(model=MODEL, prompt="The", max_tokens=4, temperature=0, logprobs=3)
    lp = got.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) >= 1
    assert all(len(t) <= 3 and v <= 0 for t, v in zip(lp.top_logprobs, lp.token_logprobs))
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
                                          logprobs=True, top_logprobs=2)
    assert all(len(c.top_logprobs) == 2 for c in chat.choices[0].logprobs.content)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="The", max_tokens=2, logprobs=6)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], logprobs=True,
                                       top_logprobs=21)


def test_prompt_longer_than_context_is_400_before_the_stream(server: Server) -> None:
    client = server.client()
    long = "the cat sat on a mat " * 600
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as exc:
            client.completions.create(model=MODEL, prompt=long, max_tokens=2, stream=stream)
        assert exc.value.body["code"] == "context_length_exceeded"


@pytest.mark.parametrize("body, param", [
    ({"model": MODEL, "prompt": "x", "n": 0}, "n"),
    ({"model": MODEL, "prompt": "x", "n": 9}, "n"),
    ({"model": MODEL, "prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"model": MODEL, "prompt": "x", "temperature": "hot"}, "temperature"),
    ({"model": MODEL, "prompt": ""}, "prompt"),
    ({"model": MODEL, "prompt": 7}, "prompt"),
    ({"model": MODEL}, "prompt"),
    ({"model": MODEL, "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"model": MODEL, "prompt": "x", "top_p": 0}, "top_p"),
    ({"model": MODEL, "prompt": [99999]}, "prompt"),
    ({"model": MODEL, "prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
])
def test_bad_requests_are_400_in_openai_format(server: Server, body: dict, param: str) -> None:
    r = httpx.post(server.base + "/completions", json=body, headers=server.headers())
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]


def test_malformed_json_unknown_model_and_routes(server: Server) -> None:
    h = {**server.headers(), "content-type": "application/json"}
    r = httpx.post(server.base + "/completions", content=b"{not json", headers=h)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = httpx.post(server.base + "/chat/completions", json={"model": MODEL, "messages": []}, headers=h)
    assert r.status_code == 400
    r = httpx.post(server.base + "/completions", json={"model": "gpt-4", "prompt": "x"}, headers=h)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert httpx.get(server.url + "/nope", headers=h).status_code == 404
    assert httpx.get(server.url + "/nope").status_code == 401  # fail closed: even unknown routes need a key


def test_every_route_but_health_needs_a_key(server: Server) -> None:
    for path in ("/v1/models", "/metrics", "/openapi.json", "/docs"):
        r = httpx.get(server.url + path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(server.url + path, headers={"Authorization": "Bearer hwlm-000000000000-" + "x" * 43}
                         ).status_code == 401
    bad = openai.OpenAI(base_url=server.base, api_key="hwlm-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_metrics_follow_vllm_names(server: Server) -> None:
    text = httpx.get(server.url + "/metrics", headers=server.headers()).text
    for name in ("hwlm:num_requests_running", "hwlm:num_requests_waiting", "hwlm:kv_cache_usage_perc",
                 "hwlm:prompt_tokens_total", "hwlm:generation_tokens_total", "hwlm:time_to_first_token_seconds",
                 "hwlm:inter_token_latency_seconds", "hwlm:e2e_request_latency_seconds",
                 "hwlm:request_queue_time_seconds", "hwlm:request_success_total"):
        assert name in text, name
    assert server.metric("hwlm:generation_tokens_total") > 0
    assert server.metric("hwlm:engine_threads") >= 1  # the engine's torch threads in its last step


def test_audit_log_has_one_record_per_request_without_prompts_or_keys(server: Server) -> None:
    from hwlm.serve.audit import verify_log

    server.client().completions.create(model=MODEL, prompt="The cat", max_tokens=3)
    httpx.post(server.base + "/completions", json={"model": MODEL, "prompt": ""}, headers=server.headers())
    httpx.get(server.base + "/models")
    log = server.folder / "audit.jsonl"
    deadline = time.monotonic() + 10  # a record is written just after its response went out
    while True:
        records = [json.loads(line) for line in log.read_text().splitlines()]
        if records and records[-1]["status"] == 401 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert records and all(r["event"] == "request" for r in records)
    served = [r for r in records if r["route"] == "/v1/completions" and r["status"] == 200]
    assert served and all(r["completion_tokens"] >= 1 and r["finish_reason"] for r in served)
    text = (server.folder / "audit.jsonl").read_text()
    assert server.key not in text and "The cat" not in text
    assert {r["status"] for r in records} >= {200, 400, 401}
    # The head is rewritten just after the record is appended: a read in between sees one record more.
    while not verify_log(server.folder / "audit.jsonl", server.folder / "audit.key").ok:
        assert time.monotonic() < deadline + 5, verify_log(server.folder / "audit.jsonl", server.folder / "audit.key")
        time.sleep(0.05)


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(server: Server) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    import subprocess
    import sys

    schema = httpx.get(server.url + "/openapi.json", headers=server.headers()).json()
    path = server.folder / "openapi.json"
    path.write_text(json.dumps(schema))
    st = Path(sys.executable).parent / "schemathesis"
    assert schemathesis and st.exists()
    r = subprocess.run([str(st), "run", str(path), "--url", server.url, "--checks", "not_a_server_error",
                        "--max-examples", "15", "-H", f"Authorization: Bearer {server.key}", "--no-color",
                        "--request-timeout", "20", "--seed", "1"],
                       capture_output=True, text=True, timeout=240, cwd=server.folder)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
