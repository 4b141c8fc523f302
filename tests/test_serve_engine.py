"""The serving engine without HTTP: stop strings, per-key windows, batched decode and greedy equality."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from hwlm.model import KVCache, ModelConfig, Transformer, generate
from hwlm.model.packing import pack_linears, packed_weight, unpack_linears
from hwlm.serve.engine import EngineConfig, LLMEngine, SamplingParams, Sequence
from hwlm.serve.engine.model_runner import ModelRunner
from hwlm.serve.engine.sequence import TextStream
from hwlm.serve.limits import RateLimiter


def _chars(ids: list[int]) -> str:
    return "".join(chr(i) for i in ids)


def _stream(text: str, stops: tuple[str, ...]) -> tuple[list[str], bool]:
    ts = TextStream(_chars, stops)
    out = []
    for ch in text:
        piece, hit = ts.push(ord(ch))
        out.append(piece)
        if hit:
            return out, True
    return out + [ts.flush()], False


def test_stop_string_is_excluded_and_never_leaks_part_way() -> None:
    pieces, hit = _stream("abcENDxyz", ("END",))
    assert hit and "".join(pieces) == "abc"
    # Nothing of "END" was sent before the stop string completed.
    assert all("E" not in p for p in pieces)


def test_held_prefix_is_released_when_the_stop_string_does_not_complete() -> None:
    pieces, hit = _stream("aENx", ("END",))
    assert not hit and "".join(pieces) == "aENx"
    assert pieces[:3] == ["a", "", ""]  # "E" and "EN" were held back until "x" ruled the stop out


def test_earliest_of_several_stop_strings_wins() -> None:
    pieces, hit = _stream("one two three", ("three", " tw"))
    assert hit and "".join(pieces) == "one"


def test_rate_limiter_windows_with_an_injected_clock() -> None:
    t = [0.0]
    lim = RateLimiter(window=10, max_requests=2, max_tokens=0, max_concurrent=1, clock=lambda: t[0])
    assert lim.acquire("k") is None
    denied = lim.acquire("k")
    assert denied is not None and "in flight" in denied.reason  # concurrency 1
    lim.release("k")
    t[0] = 4.0
    assert lim.acquire("k") is None
    lim.release("k")
    denied = lim.acquire("k")
    assert denied is not None and "requests" in denied.reason and denied.retry_after == pytest.approx(6.0)
    assert lim.acquire("other") is None  # keys are counted apart
    t[0] = 10.5  # the first request left the window
    assert lim.acquire("k") is None

    tokens = RateLimiter(window=10, max_requests=0, max_tokens=100, max_concurrent=0, clock=lambda: t[0])
    t[0] = 0.0
    assert tokens.acquire("k") is None
    tokens.release("k", tokens=120)  # counted when the request ends
    t[0] = 3.0
    denied = tokens.acquire("k")
    assert denied is not None and "tokens" in denied.reason and denied.retry_after == pytest.approx(7.0)
    t[0] = 10.0
    assert tokens.acquire("k") is None
    assert RateLimiter.header(0.2) == "1" and RateLimiter.header(6.0) == "6"


@pytest.mark.parametrize("flavour", ["debug", "llama-debug"])
def test_batched_decode_matches_single_rows_and_full_forward(flavour: str) -> None:
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name(flavour, vocab_size=300)).eval()
    runner = ModelRunner(model, num_slots=6)
    prompts = {1: [5, 9, 17], 2: [3], 4: [8, 8, 2, 30, 41, 7, 6], 5: [11, 12]}  # slots 1, 2, 4, 5: not a run
    nxt = {1: 20, 2: 21, 4: 22, 5: 23}
    for slot, ids in prompts.items():
        runner.prefill(ids, slot, 0)
    slots = sorted(prompts)
    batch = runner.decode([nxt[s] for s in slots], slots, [len(prompts[s]) for s in slots])  # (4, V)
    with torch.inference_mode():
        for row, s in enumerate(slots):
            full, _ = model(torch.tensor([prompts[s] + [nxt[s]]]))
            torch.testing.assert_close(batch[row], full[0, -1], atol=1e-5, rtol=1e-5)
    # Slots 1 and 2 are a run of slots: the view path, checked against the rows computed above.
    runner2 = ModelRunner(model, num_slots=6)
    for s in (1, 2):
        runner2.prefill(prompts[s], s, 0)
    pair = runner2.decode([nxt[1], nxt[2]], [1, 2], [3, 1])
    torch.testing.assert_close(pair, batch[:2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("flavour", ["debug", "llama-debug"])
def test_one_packed_step_mixes_prefills_chunks_and_decodes(flavour: str) -> None:
    """Decode rows, a whole prompt and a prompt's second chunk in one forward equal the full forward."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name(flavour, vocab_size=300)).eval()
    runner = ModelRunner(model, num_slots=5)
    seqs = {0: [5, 9, 17, 20], 1: [3, 4], 2: [8, 8, 2, 30, 41, 7], 4: [11, 12, 13, 14, 15]}
    runner.prefill(seqs[0][:3], 0, 0)  # slot 0 decodes its 4th token
    runner.prefill(seqs[1][:1], 1, 0)  # slot 1 decodes its 2nd token
    runner.prefill(seqs[4][:2], 4, 0)  # slot 4's prompt: its second chunk now
    rows = [([20], 0, 3), ([4], 1, 1), (seqs[2], 2, 0), (seqs[4][2:], 4, 2)]  # slot 2: a whole prompt
    logits = runner.step(rows)  # (4, V)
    with torch.inference_mode():
        for row, slot in enumerate((0, 1, 2, 4)):
            full, _ = model(torch.tensor([seqs[slot]]))
            torch.testing.assert_close(logits[row], full[0, -1], atol=1e-5, rtol=1e-5)
    # The cache now holds every token: one more packed decode step still equals the full forward.
    after = runner.step([([7], 2, 6), ([9], 4, 5)])
    with torch.inference_mode():
        for row, slot in enumerate((2, 4)):
            full, _ = model(torch.tensor([seqs[slot] + [[7], [9]][row]]))
            torch.testing.assert_close(after[row], full[0, -1], atol=1e-5, rtol=1e-5)


def _emitters(outs: list[list[int]], done: threading.Semaphore):
    """``emitter(i)``: an engine callback that collects sequence i's tokens into ``outs[i]`` and releases ``done``
    when it finishes."""
    def emitter(i: int):
        def emit(ev) -> None:
            outs[i].extend(ev.token_ids)
            if ev.finish_reason is not None:
                done.release()
        return emit
    return emitter


def _run_engine(loaded, prompts: list[list[int]], max_tokens: int, prefill_budget: int = 512,
                params: dict | None = None) -> list[list[int]]:
    engine = LLMEngine(loaded.model, loaded.tokenizer, loaded.eot_id,
                       EngineConfig(max_num_seqs=4, max_waiting=8, prefill_budget=prefill_budget))
    engine.start()
    outs: list[list[int]] = [[] for _ in prompts]
    done = threading.Semaphore(0)
    emitter = _emitters(outs, done)
    decode = lambda ids: loaded.tokenizer.decode(ids)  # noqa: E731
    try:
        engine.submit([Sequence(p, SamplingParams(max_tokens=max_tokens, **{"temperature": 0.0, **(params or {})}),
                                emitter(i), decode) for i, p in enumerate(prompts)])
        for _ in prompts:
            assert done.acquire(timeout=60), "the engine did not finish a sequence"
    finally:
        engine.stop()
    return outs


def test_greedy_equals_generate_alone_in_a_batch_and_with_chunked_prefill(tiny_run) -> None:
    from hwlm.train.load import load_model

    loaded = load_model(tiny_run)
    tok = loaded.tokenizer
    prompts = [tok.encode(t).ids for t in ("The cat", "A dog ran to the park", "Because it", "the")]
    new = 12
    ref = [list(generate(loaded.model, p, new, temperature=0, eos_id=loaded.eot_id)) for p in prompts]
    assert _run_engine(loaded, prompts[:1], new) == ref[:1]  # alone: batch 1
    assert _run_engine(loaded, prompts, new) == ref  # four at once: batched decode, own positions
    assert _run_engine(loaded, prompts, new, prefill_budget=3) == ref  # prompts split across steps


def test_run_steps_the_model_in_the_calling_thread_until_stopped_from_another(tiny_run) -> None:
    # The serve worker loads, times and steps the model in one thread (one OpenMP team: LLMEngine.run).
    from hwlm.train.load import load_model

    loaded = load_model(tiny_run)
    engine = LLMEngine(loaded.model, loaded.tokenizer, loaded.eot_id, EngineConfig(max_num_seqs=2, max_waiting=4))
    stepped_on, forward = set(), engine.runner.step
    engine.runner.step = lambda rows: stepped_on.add(threading.get_ident()) or forward(rows)
    outs, done = [[]], threading.Semaphore(0)
    prompt = loaded.tokenizer.encode("The cat").ids
    engine.submit([Sequence(prompt, SamplingParams(max_tokens=5, temperature=0.0), _emitters(outs, done)(0),
                            loaded.tokenizer.decode)])

    def stop_when_done() -> None:
        done.acquire(timeout=60)
        engine.stop()

    stopper = threading.Thread(target=stop_when_done)
    stopper.start()
    engine.run()  # returns once the stopper's stop() lands
    stopper.join(timeout=5)
    assert stepped_on == {threading.get_ident()}
    assert outs[0] == list(generate(loaded.model, prompt, 5, temperature=0, eos_id=loaded.eot_id))


def test_seeded_sampling_repeats_and_does_not_depend_on_the_batch(tiny_run) -> None:
    from hwlm.train.load import load_model

    loaded = load_model(tiny_run)
    p = loaded.tokenizer.encode("The cat").ids
    sampled = dict(temperature=1.0, top_p=0.9, seed=7)
    a = _run_engine(loaded, [p], 10, params=sampled)
    b = _run_engine(loaded, [p, loaded.tokenizer.encode("A dog").ids], 10, params=sampled)
    c = _run_engine(loaded, [p], 10, params={**sampled, "seed": 8})
    assert a[0] == b[0] and a[0]
    assert c[0] != a[0]  # another seed, another draw (10 tokens from a near-flat distribution)


def test_a_compressed_run_serves_through_load_model(tiny_run, tmp_path) -> None:
    from hwlm.compress import CompressConfig, compress
    from hwlm.train.load import load_model

    compress(CompressConfig(run=tiny_run, out=tmp_path / "int8", method="int8", precision="w8a16"))
    loaded = load_model(tmp_path / "int8")
    prompts = [loaded.tokenizer.encode(t).ids for t in ("The cat", "A dog ran")]
    ref = [list(generate(loaded.model, p, 8, temperature=0, eos_id=loaded.eot_id)) for p in prompts]
    assert _run_engine(loaded, prompts[:1], 8) == ref[:1] and _run_engine(loaded, prompts, 8) == ref
    from hwlm.serve.engine.worker import fastest_dtype as _fastest_dtype

    assert _fastest_dtype(loaded.model, 4) == "fp32"  # --dtype auto leaves quantized weights alone
    assert _fastest_dtype(load_model(tiny_run).model, 4) in ("fp32", "bf16")  # timed, so either may win


def _bf16_packed_runner(flavour: str, slots: int) -> tuple[Transformer, ModelRunner]:
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name(flavour, vocab_size=300)).eval().to(torch.bfloat16)
    runner = ModelRunner(model, num_slots=slots)
    if not runner.packed:
        pytest.skip("this CPU has no oneDNN bf16 (avx512_bf16 or AMX): nothing is prepacked")
    return model, runner


@pytest.mark.parametrize("flavour", ["debug", "llama-debug"])
def test_prepacked_bf16_linears_give_the_module_path_numbers(flavour: str) -> None:
    """The oneDNN weights packed once compute what ``F.linear`` computes on the same bf16 weights, bit for bit."""
    model, runner = _bf16_packed_runner(flavour, 4)
    rows = [([5, 9, 17], 0, 0), ([3], 1, 0), ([8, 2, 30, 41], 3, 0)]
    packed = runner.step(rows)
    unpack_linears(model)
    with torch.inference_mode():
        unpacked = runner._packed(rows)  # the same step, each linear through the module (F.linear)
    assert torch.equal(packed, unpacked)


@pytest.mark.parametrize("flavour", ["debug", "llama-debug"])
def test_fp32_packed_rows_match_the_forward_and_do_not_depend_on_the_batch(flavour: str) -> None:
    """In fp32 the runner packs too (weights of 512 KiB or more; here all): a row of a batch equals the full
    unpacked forward to fp32 round-off and its own logits in a batch of another size exactly; a lone row is
    ``decode_step`` on the packed model, what ``hwlm generate`` (which packs) computes, exactly."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name(flavour, vocab_size=300)).eval()
    with torch.inference_mode():
        plain = {s: model(torch.tensor([ids + [20]]))[0][0, -1] for s, ids in PROMPTS.items()}
    pack_linears(model, 0)  # every layer, small as they are here (the runner's default leaves fp32 under 512 KiB)
    runner = ModelRunner(model, num_slots=6)
    if not runner.packed:
        pytest.skip("no oneDNN in this torch build: nothing is packed")
    assert packed_weight(model.lm_head) is not None and runner.kv_dtype == torch.float32
    for slot, ids in PROMPTS.items():
        runner.prefill(ids, slot, 0)
    slots = sorted(PROMPTS)  # 0, 2, 3, 5: a span of 6 slots, read as one view (the gaps attend to key 0)
    batch = runner.decode([20] * 4, slots, [len(PROMPTS[s]) for s in slots])
    by_slot = dict(zip(slots, batch))
    # The same positions again (the same k/v rewritten), a row's logits the same whatever rows step beside it:
    # a run of slots in order (a view), out of order (the span), far apart (copied out by index_select).
    for pick in ([2, 3], [3, 2], [0, 5], [5, 2, 0]):
        got = runner.decode([20] * len(pick), pick, [len(PROMPTS[s]) for s in pick])
        assert all(torch.equal(row, by_slot[s]) for row, s in zip(got, pick)), pick
    with torch.inference_mode():
        for row, s in enumerate(slots):
            torch.testing.assert_close(batch[row], plain[s], atol=1e-5, rtol=1e-5)
            cache = KVCache(model.cfg, 1)
            model(torch.tensor([PROMPTS[s]]), cache=cache)
            alone = runner.decode([20], [s], [len(PROMPTS[s])])[0]  # the lone row: decode_step's numbers
            assert torch.equal(alone, model.decode_step(20, cache, len(PROMPTS[s])))
            torch.testing.assert_close(alone, batch[row], atol=1e-5, rtol=1e-5)


PROMPTS = {0: [5, 9, 17], 2: [3], 3: [8, 8, 2, 30, 41, 7, 6], 5: [11, 4]}


@pytest.mark.parametrize("flavour", ["debug", "llama-debug"])
def test_bf16_packed_rows_match_the_fp32_forward_and_do_not_depend_on_the_batch(flavour: str) -> None:
    """In bf16 every step of several rows is packed, and a lone decoding row is decode_step on the fp32 cache: each
    row is close to the fp32 full forward, and a row's logits in a batch equal its logits stepped alone (either
    way) to bf16 rounding, with the same greedy token."""
    model, runner = _bf16_packed_runner(flavour, 6)
    full_model = Transformer(model.cfg).eval()
    full_model.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    prompts = {0: [5, 9, 17], 2: [3], 3: [8, 8, 2, 30, 41, 7, 6]}
    for slot, ids in prompts.items():
        runner.prefill(ids, slot, 0)
    slots = sorted(prompts)
    batch = runner.decode([20] * len(slots), slots, [len(prompts[s]) for s in slots]).float()
    with torch.inference_mode():
        for row, s in enumerate(slots):
            full, _ = full_model(torch.tensor([prompts[s] + [20]]))
            torch.testing.assert_close(batch[row], full[0, -1], atol=0.1, rtol=0.05)
    alone = ModelRunner(model, num_slots=6)
    for row, s in enumerate(slots):
        alone.prefill(prompts[s], s, 0)
        one = alone.decode([20], [s], [len(prompts[s])]).float()[0]  # decode_step, bf16 weights on the fp32 cache
        torch.testing.assert_close(one, batch[row], atol=2e-2, rtol=2e-2)
        assert int(one.argmax()) == int(batch[row].argmax())
        with torch.inference_mode():
            stepped = alone._packed([([20], s, len(prompts[s]))]).float()[0]  # the packed step, the same row
        torch.testing.assert_close(one, stepped, atol=2e-2, rtol=2e-2)


def test_engine_threads_default_to_every_core(monkeypatch) -> None:
    import os

    from hwlm.serve.engine.worker import engine_threads

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert engine_threads(3) == 3  # asked for: as asked
    assert engine_threads(0) == cores
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert engine_threads(0) == 1  # OMP_NUM_THREADS caps the default
    monkeypatch.setenv("OMP_NUM_THREADS", f"{cores + 8},1")
    assert engine_threads(0) == cores  # never more than the cores


def test_a_lone_row_runs_on_lone_threads_and_a_batch_goes_back(tiny_run) -> None:
    """Lone -> batched -> lone: the engine's threads follow the batch (lone_threads while one row runs and
    nothing waits, threads with two), and both sequences still equal ``generate`` (fp32)."""
    from hwlm.train.load import load_model

    loaded = load_model(tiny_run)
    tok = loaded.tokenizer
    first, second = tok.encode("The cat").ids, tok.encode("A dog ran to the park").ids
    ref = [list(generate(loaded.model, p, n, temperature=0, eos_id=loaded.eot_id)) for p, n in ((first, 20), (second, 4))]
    before = torch.get_num_threads()
    engine = LLMEngine(loaded.model, tok, loaded.eot_id, EngineConfig(max_num_seqs=4, threads=1, lone_threads=2))
    outs: list[list[int]] = [[], []]
    done = threading.Semaphore(0)
    seen: list[tuple[int, int]] = []  # (sequences running, the engine's threads) after each step

    emitter = _emitters(outs, done)

    def after_step() -> None:
        seen.append((len(engine.scheduler.running), engine.threads))
        if len(seen) == 5:  # the first sequence has run alone for five steps: a second one joins
            engine.submit([Sequence(second, SamplingParams(max_tokens=4, temperature=0.0), emitter(1), tok.decode)])

    engine.after_step = after_step
    engine.start()
    try:
        engine.submit([Sequence(first, SamplingParams(max_tokens=20, temperature=0.0), emitter(0), tok.decode)])
        assert done.acquire(timeout=60) and done.acquire(timeout=60), "the engine did not finish both sequences"
    finally:
        engine.stop()
        torch.set_num_threads(before)
    assert outs == ref
    threads = [t for _, t in seen]
    assert threads[:5] == [2] * 5  # alone (its prefill too)
    joined = threads.index(1)
    assert joined == 5 and threads[joined:joined + 3] == [1] * 3  # the two run together on threads
    assert threads[-1] == 2 and engine.thread_switches >= 3  # alone again: back to lone_threads
    assert seen[-1][0] == 0  # the last step finished the first sequence


def test_lone_threads_default_to_every_core(monkeypatch) -> None:
    import os

    from hwlm.serve.engine.worker import lone_threads

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert lone_threads(1) == 1 and lone_threads(0) == cores
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert lone_threads(0) == 1  # OMP_NUM_THREADS caps it, as it caps --engine-threads


def test_lone_threads_chooser_keeps_the_faster_count_and_looks_again() -> None:
    from hwlm.serve.engine.threads import LoneThreads

    fixed = LoneThreads(batch=1, lone=2, probe=False)
    assert {fixed.pick() for _ in range(5)} == {2}
    chooser = LoneThreads(batch=1, lone=2, probe=True, window=4, every=16, probe_steps=4)
    cost = {1: 7.0, 2: 9.0}  # two threads stall here (a busy machine)
    picks = []
    for step in range(96):
        if step == 48:
            cost = {1: 7.0, 2: 5.0}  # the machine went quiet: two threads win
        n = chooser.pick()
        picks.append(n)
        chooser.record(n, cost[n] * 1e-3)
    assert picks[:4].count(1) == picks[:4].count(2) == 2  # measures both first
    steady = picks[4:48]
    assert steady.count(1) >= 32 and steady.count(2) >= 4  # mostly the faster, with looks at the other
    assert picks[-32:].count(2) >= 24 and picks[-12:] == [2] * 12  # a look saw the change


def test_fastest_chooser_over_named_options_starts_with_the_first_and_looks_at_the_others() -> None:
    from hwlm.serve.engine.threads import Fastest

    assert Fastest(("eager",)).pick() == "eager"
    chooser = Fastest(("compiled", "eager", "other"), window=2, every=8, probe_steps=2)
    cost = {"compiled": 5.0, "eager": 7.0, "other": 9.0}
    picks = []
    for _ in range(40):
        n = chooser.pick()
        picks.append(n)
        chooser.record(n, cost[n] * 1e-3)
    assert set(picks[:3]) == {"compiled", "eager", "other"}  # each timed once before any choice
    assert picks[3:].count("compiled") >= 28 and {"eager", "other"} <= set(picks[8:])  # looks at both others
    assert chooser.best() == "compiled"


@pytest.mark.slow
@pytest.mark.parametrize("flavour", ["debug", "llama-debug"])
def test_compiled_lone_row_matches_the_eager_row_in_every_bucket_and_slot(flavour: str) -> None:
    """``compile_lone`` (``hwlm serve --compile``): a lone decoding row through the compiled step gives the eager
    row's logits to round-off in each context bucket and slot, writes its key and value into its own slot only,
    and a batched step after it sees them; one graph serves every slot."""
    from torch._dynamo.utils import counters

    from hwlm.serve.engine.threads import Fastest

    torch._dynamo.reset()  # no other test's graphs count against dynamo's recompile limit here
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name(flavour, vocab_size=300, block_size=128)).eval()
    eager = ModelRunner(copy.deepcopy(model), num_slots=4)
    runner = ModelRunner(model, num_slots=4)
    before = counters["stats"]["unique_graphs"]
    found = runner.compile_lone(steps=2)
    assert counters["stats"]["unique_graphs"] == before + 2  # compiled (not past dynamo's limit): a graph a bucket
    assert found["compiled"] and found["buckets"] == [64, 128] and found["first"] in ("compiled", "eager")
    assert set(found["lone_ms"]) == {"compiled", "eager"}
    runner.lone_path = Fastest(("compiled",))  # the compiled path alone, to test it
    graphs = counters["stats"]["unique_graphs"]  # compile_lone compiled each bucket on slot 0
    prompt = [(7 * i) % 290 + 1 for i in range(80)]
    for slot in (1, 3):
        runner.prefill(prompt[:60], slot, 0)
        eager.prefill(prompt[:60], slot, 0)
    for pos in range(60, 70):  # 60-63 in the 64 bucket, 64-69 in the 128 one
        for slot in (1, 3):
            got = runner.decode([prompt[pos]], [slot], [pos])
            torch.testing.assert_close(got, eager.decode([prompt[pos]], [slot], [pos]), atol=1e-4, rtol=1e-4)
    both = runner.decode([5, 6], [1, 3], [70, 70])  # the batched step reads what the compiled steps wrote
    torch.testing.assert_close(both, eager.decode([5, 6], [1, 3], [70, 70]), atol=1e-4, rtol=1e-4)
    assert all(float(buf[:, 2].abs().sum()) == 0.0 for buf in runner.cache.kv)  # slot 2 was never written
    assert counters["stats"]["unique_graphs"] == graphs  # slots 1 and 3 ran slot 0's graphs: none per slot


def test_compile_lone_is_for_fp32_on_the_cpu_and_the_config_refuses_other_back_ends() -> None:
    from hwlm.errors import ConfigError
    from hwlm.serve.config import ServeConfig

    model = Transformer(ModelConfig.from_name("debug", vocab_size=300)).eval().to(torch.bfloat16)
    runner = ModelRunner(model, num_slots=2)
    found = runner.compile_lone()
    assert not found["compiled"] and "fp32 on the CPU" in found["why"] and runner.lone_step is None
    with pytest.raises(ConfigError, match="torch back end"):
        ServeConfig(run="r", compile=True, backend="onnx", onnx="m.onnx")
    with pytest.raises(ConfigError, match="fp32 lone step"):
        ServeConfig(run="r", compile=True, dtype="bf16")
    assert ServeConfig(run="r", compile=True, dtype="auto").compile  # auto may pick fp32: the worker decides
