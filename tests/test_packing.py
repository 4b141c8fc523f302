"""hwlm.model.packing: linear weights packed once for oneDNN, used only where they still match the weights."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

from hwlm.model import KVCache, ModelConfig, Transformer, generate
from hwlm.model.packing import (PACK_MIN_BYTES, pack_linears, packable_dtypes, packed_bytes, packed_weight,
                                unpack_linears)
from hwlm.model.transformer import linear

pytestmark = pytest.mark.skipif(torch.float32 not in packable_dtypes(), reason="no oneDNN in this torch build")


def make(name: str = "debug") -> Transformer:
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name(name, vocab_size=300)).eval()
    with torch.no_grad():
        model.wte.weight.mul_(10)  # larger activations than the init's, so a difference would show
    return model


def test_pack_linears_packs_every_plain_linear_and_counts_their_bytes() -> None:
    model = make()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert pack_linears(model, 0) == len(linears) and pack_linears(model, 0) == len(linears)  # idempotent
    assert all(packed_weight(m) is not None for m in linears)
    assert packed_bytes(model) == sum(m.weight.numel() * 4 for m in linears)
    unpack_linears(model)
    assert packed_bytes(model) == 0 and all(packed_weight(m) is None for m in linears)


def test_by_default_small_fp32_weights_stay_on_mkl_and_large_ones_are_packed() -> None:
    """Below PACK_MIN_BYTES a gemv from cache beats oneDNN's call overhead (measured): only the large output layer
    of this model packs, and its tied embedding is untouched."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("debug", vocab_size=50304)).eval()  # head: 50,304 x 16 fp32 = 3.2 MB
    assert model.lm_head.weight.numel() * 4 >= PACK_MIN_BYTES > model.h[0].mlp.c_fc.weight.numel() * 4
    assert pack_linears(model) == 1 and packed_weight(model.lm_head) is not None
    assert packed_weight(model.h[0].mlp.c_fc) is None
    idx = torch.randint(0, 50304, (1, 6))
    with torch.inference_mode():
        packed = model(idx)[0]
        unpack_linears(model)
        torch.testing.assert_close(packed, model(idx)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rows", [1, 3, 40])
def test_a_packed_linear_is_the_plain_one_to_round_off_and_a_row_does_not_depend_on_the_batch(rows: int) -> None:
    model = make()
    layer = model.h[0].mlp.c_fc
    x = torch.randn(rows, layer.in_features)
    with torch.inference_mode():
        plain = linear(x, layer)
        pack_linears(model, 0)
        packed = linear(x, layer)
        first_alone = linear(x[:1], layer)
    torch.testing.assert_close(packed, F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed, plain, atol=1e-5, rtol=1e-5)
    assert torch.equal(first_alone[0], packed[0])  # a row's outputs: the same alone or among others


def test_a_changed_weight_is_never_read_through_its_stale_packed_copy() -> None:
    model = make()
    layer = model.h[0].attn.c_proj
    pack_linears(model, 0)
    x = torch.randn(2, layer.in_features)
    with torch.no_grad():
        layer.weight.mul_(2)  # an in-place update (an optimizer step, load_state_dict)
        assert packed_weight(layer) is None
        torch.testing.assert_close(linear(x, layer), F.linear(x, layer.weight, layer.bias))
    model.to(torch.float64)  # new storage
    assert packed_weight(layer) is None
    model.float()
    pack_linears(model, 0)  # repacked on the current weights
    assert packed_weight(layer) is not None


def test_with_a_gradient_the_plain_path_runs_and_backpropagates() -> None:
    model = make()
    pack_linears(model, 0)
    idx = torch.randint(0, 300, (2, 8))
    _, loss = model(idx, targets=idx)
    loss.backward()
    assert model.h[0].mlp.c_fc.weight.grad is not None


def test_copies_and_pickles_of_a_packed_model_load_unpacked() -> None:
    model = make()
    pack_linears(model, 0)
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert packed_bytes(twin) == 0 and packed_weight(twin.lm_head) is None
        idx = torch.randint(0, 300, (1, 5))
        with torch.inference_mode():
            torch.testing.assert_close(twin(idx)[0], model(idx)[0], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("name", ["debug", "llama-debug"])
def test_on_a_packed_model_decode_step_equals_forward_exactly_and_generate_matches_the_plain_model(name: str) -> None:
    """decode_step and forward's batch-1 path run the same packed kernels (equal numbers); greedy tokens equal
    the unpacked model's."""
    plain = make(name)
    model = copy.deepcopy(plain)
    pack_linears(model, 0)
    idx = torch.randint(0, 300, (1, 12))
    fast, slow = KVCache(model.cfg, batch_size=1), KVCache(model.cfg, batch_size=1)
    state = model.decode_state()
    with torch.inference_mode():
        model(idx[:, :4], cache=fast)
        model(idx[:, :4], cache=slow)
        for t in range(4, 12):
            want = model(idx[:, t:t + 1], cache=slow, start_pos=t)[0]
            got = model.decode_step(int(idx[0, t]), fast, t, state)
            assert torch.equal(got.view(1, 1, -1), want)
            ref = plain(idx[:, :t + 1])[0][0, -1]
            torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-5)
    prompt = idx[0, :5].tolist()
    assert list(generate(model, prompt, 12, temperature=0)) == list(generate(plain, prompt, 12, temperature=0))


@pytest.mark.skipif(torch.bfloat16 not in packable_dtypes(), reason="this CPU has no oneDNN bf16")
def test_bf16_weights_pack_and_decode_close_to_the_module_path() -> None:
    model = make().to(torch.bfloat16)
    plain = copy.deepcopy(model)
    assert pack_linears(model, 0) > 0
    idx = torch.randint(0, 300, (1, 9))
    with torch.inference_mode():
        torch.testing.assert_close(model(idx)[0], plain(idx)[0], atol=2e-2, rtol=2e-2)


def test_the_compress_table_times_an_fp32_model_packed_and_counts_the_packed_copy() -> None:
    """``hwlm compress``'s table measures a model as hwlm generate runs it, and its memory holds both copies."""
    from hwlm.compress.table import measure_row, model_bytes

    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("debug", vocab_size=50304)).eval()  # its 3.2 MB head packs
    plain_bytes = model_bytes(model)
    row = measure_row("fp32", model, weights_file=None, quality_row={"ppl": 1.0, "kl": 0.0}, baseline_ppl=None,
                      batches=[1], steps=1)
    assert packed_weight(model.lm_head) is not None
    assert row["memory_mb"] * 1e6 >= plain_bytes + model.lm_head.weight.numel() * 4
