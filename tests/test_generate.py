"""generate(): KV-cache decoding equals recomputation, seeding, stopping, sliding window, errors."""

from __future__ import annotations

import pytest
import torch

from hwlm.errors import ConfigError
from hwlm.model import ModelConfig, Transformer, generate
from hwlm.model.generation import sample_next

V = 64


def make(name: str = "debug", **kw) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name(name, vocab_size=V, **kw))
    with torch.no_grad():  # sharper logits than the init's near-uniform ones, so greedy is not a tie
        model.wte.weight.mul_(20)
    return model


def greedy_without_cache(model: Transformer, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([ids[-model.cfg.block_size:]]))
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("name", ["debug", "llama-debug"])
def test_greedy_with_kv_cache_equals_recomputation(name: str) -> None:
    model = make(name).eval()
    prompt = [3, 14, 15, 9, 26]
    n = model.cfg.block_size - len(prompt)  # fill the whole context
    assert list(generate(model, prompt, n, temperature=0)) == greedy_without_cache(model, prompt, n)



def test_greedy_under_autocast_takes_the_general_path_and_matches_float32() -> None:
    """Under autocast the loop falls back to forward (which casts); sharp logits keep the same tokens."""
    model = make().eval()
    expected = list(generate(model, [3, 14, 15], 12, temperature=0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert list(generate(model, [3, 14, 15], 12, temperature=0)) == expected

def test_same_seed_same_tokens_other_seed_other_tokens() -> None:
    model = make()
    run = lambda seed: list(generate(model, [1, 2], 20, temperature=1.0, seed=seed))  # noqa: E731
    assert run(7) == run(7)
    assert run(7) != run(8)


def test_top_k_one_and_tiny_top_p_are_greedy() -> None:
    model = make().eval()
    greedy = list(generate(model, [5], 10, temperature=0))
    assert list(generate(model, [5], 10, temperature=0.8, top_k=1, seed=0)) == greedy
    assert list(generate(model, [5], 10, temperature=0.8, top_p=1e-6, seed=0)) == greedy
    # below float32's smallest number top_p rounds to 0: still greedy, never an empty distribution
    assert list(generate(model, [5], 10, temperature=0.8, top_p=1e-50, seed=0)) == greedy


def test_sampling_respects_top_k() -> None:
    logits = torch.tensor([0.0, 5.0, 4.0, -1.0, 3.0])
    gen = torch.Generator().manual_seed(0)
    drawn = {sample_next(logits, 1.0, top_k=2, generator=gen) for _ in range(200)}
    assert drawn == {1, 2}
    drawn = {sample_next(logits, 1.0, top_p=0.9, generator=gen) for _ in range(200)}
    assert drawn <= {1, 2, 4} and 1 in drawn


def test_stops_after_eos_and_streams_lazily() -> None:
    model = make().eval()
    greedy = list(generate(model, [5], 10, temperature=0))
    eos = greedy[3]
    out = list(generate(model, [5], 10, temperature=0, eos_id=eos))
    assert out == greedy[:greedy.index(eos) + 1]
    stream = generate(model, [5], 10, temperature=0)
    assert next(stream) == greedy[0]  # a generator: tokens come one by one
    assert list(generate(model, [5], 0)) == []


def test_context_longer_than_block_size_slides_the_window() -> None:
    model = make("llama-debug").eval()
    block = model.cfg.block_size
    long_prompt = [i % V for i in range(block + 10)]
    out = list(generate(model, long_prompt, 3 * block, temperature=0))
    assert len(out) == 3 * block and all(0 <= t < V for t in out)
    # The long prompt is cropped to its last block_size tokens.
    assert out[0] == greedy_without_cache(model, long_prompt[-block:], 1)[0]
    assert model.training is False


def test_generate_restores_training_mode() -> None:
    model = make().train()
    list(generate(model, [1], 3, temperature=0))
    assert model.training


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt_ids=[]), "the prompt is empty"),
    (dict(prompt_ids=[V]), f"prompt token id {V} is outside the vocabulary \\[0, {V}\\)"),
    (dict(temperature=-1.0), "temperature must be >= 0"),
    (dict(top_k=0), "top_k must be >= 1 or unset, got 0"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\] or unset, got 1.5"),
    (dict(max_new_tokens=-1), "max_new_tokens must be >= 0"),
])
def test_bad_arguments_raise_config_errors(kwargs: dict, message: str) -> None:
    args = dict(prompt_ids=[1], max_new_tokens=3) | kwargs
    with pytest.raises(ConfigError, match=message):
        next(generate(make(), **args))


@pytest.mark.parametrize("name", ["debug", "llama-debug"])
def test_static_step_rows_at_different_positions_equal_eager_decoding(name: str) -> None:
    """The fixed-shape step (masked full cache, positions as a tensor) computes what decode_step does, per row."""
    from hwlm.model import KVCache
    from hwlm.model.decoding import StaticDecoder

    model = make(name).eval()
    prompts = [[3, 14, 15, 9, 26], [5, 8]]
    dec = StaticDecoder(model, batch_size=2, max_len=model.cfg.block_size)
    refs = []
    for row, prompt in enumerate(prompts):
        with torch.inference_mode():
            cache = KVCache(model.cfg, 1)
            model(torch.tensor([prompt]), cache=cache)
            refs.append((cache, model.decode_state()))
        first = dec.prefill_row(row, prompt)  # each row gets its own prompt, of its own length
        with torch.no_grad():
            torch.testing.assert_close(first, model(torch.tensor([prompt]))[0][0, -1], rtol=0, atol=1e-5)
    tokens, pos = [7, 11], [len(p) for p in prompts]
    for _ in range(6):
        got = dec.step(torch.tensor(tokens), torch.tensor(pos))  # (2, V)
        for row in range(2):
            with torch.inference_mode():
                want = model.decode_step(tokens[row], refs[row][0], pos[row], refs[row][1])
            torch.testing.assert_close(got[row], want, rtol=0, atol=1e-5)
        tokens = [int(t) for t in got.argmax(-1)]
        pos = [p + 1 for p in pos]


def test_cache_length_buckets() -> None:
    from hwlm.model.decoding import cache_length

    assert [cache_length(n, 1024) for n in (1, 64, 65, 300, 1024, 5000)] == [64, 64, 128, 512, 1024, 1024]
    assert cache_length(10, 32) == 32


@pytest.mark.slow
def test_compiled_decode_gives_the_same_greedy_tokens_across_a_window_slide() -> None:
    """torch.compile of the fixed-shape step (one graph, 20-40 s on 2 cores): greedy tokens as today's decode."""
    model = make().eval()
    prompt = [3, 14, 15, 9, 26]
    n = 2 * model.cfg.block_size  # past block_size: the static cache fills and the window slides
    expected = list(generate(model, prompt, n, temperature=0))
    assert list(generate(model, prompt, n, temperature=0, compile=True)) == expected
    assert list(generate(model, [1, 2], 5, temperature=0, compile=True)) == list(generate(model, [1, 2], 5,
                                                                                        temperature=0))
    # Each compiled call gives its cache back to the model's pool and the next call takes it (the same
    # buffers: a CUDA graph recorded on their addresses replays); two calls running at once never share one.
    from hwlm.model.decoding import _FREE_CACHES, cache_length

    short = list(generate(model, [1, 2], 5, temperature=0))
    pool = _FREE_CACHES[model]
    (key,) = [k for k in pool if k[1] == cache_length(7, model.cfg.block_size)]
    assert len(pool[key]) == 1
    kept = pool[key][0]
    a, b = generate(model, [1, 2], 5, temperature=0, compile=True), generate(model, [1, 2], 5, temperature=0,
                                                                              compile=True)
    first = [next(a), next(b)]  # both started: a holds the pooled cache, b a new one
    assert pool[key] == [] and first == short[:1] * 2
    assert first[:1] + list(a) == short and first[1:] + list(b) == short
    assert len(pool[key]) == 2 and pool[key][0] is kept
