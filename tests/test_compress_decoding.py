"""The compiled batch-1 decode step's float Linears as fused row reductions (``hwlm.model.decoding.row_linear``):
the same numbers as the eager model within 1e-5, and no gemm/gemv call left in the compiled graph.

Speed is benchmarks/gemv_bandwidth.py's and benchmarks/generate_speed.py's question, never a test's.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hwlm.model import ModelConfig, Transformer
from hwlm.model.decoding import StaticDecoder, row_linear


def test_row_linear_is_the_module_call_outside_a_compiled_graph() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 40)
    x = torch.randn(1, 1, 48)
    assert torch.equal(row_linear(lin, x), lin(x))  # eager: the module itself, bit for bit


def test_compiled_row_linear_equals_the_linear() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 80)
    for x in (torch.randn(1, 1, 96), torch.randn(1, 96)):
        got = torch.compile(row_linear, fullgraph=True, dynamic=False)(lin, x)
        torch.testing.assert_close(got, F.linear(x, lin.weight, lin.bias), rtol=0, atol=1e-5)
        assert got.shape == (*x.shape[:-1], 80)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["debug", "llama-debug"])
def test_compiled_batch1_step_equals_eager_and_calls_no_matmul(name: str) -> None:
    from torch._inductor.utils import run_and_get_code

    from hwlm.model import KVCache

    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name(name, n_embd=64)).eval()
    prompt = [3, 14, 15, 9, 26]
    dec = StaticDecoder(model, batch_size=1, max_len=model.cfg.block_size, compile=True)
    dec.prefill(torch.tensor([prompt]))
    with torch.inference_mode():
        cache = KVCache(model.cfg, 1)
        model(torch.tensor([prompt]), cache=cache)
        state = model.decode_state()
    token, pos = 7, len(prompt)
    for i in range(4):
        if i == 0:
            got, code = run_and_get_code(dec.step, torch.tensor([token]), torch.tensor([pos]))
            kernels = "\n".join(code)
            assert "def call(" in kernels  # this call compiled the step (a new model: a new graph)
            for call in ("extern_kernels.mm", "extern_kernels.addmm", "aten.addmv", "aten.mm", "aten.mv", "mkldnn"):
                assert call not in kernels, f"{call} left in the compiled batch-1 step"
        else:
            got = dec.step(torch.tensor([token]), torch.tensor([pos]))
        with torch.inference_mode():
            want = model.decode_step(token, cache, pos, state)
        torch.testing.assert_close(got[0], want, rtol=0, atol=1e-5)
        token, pos = int(got.argmax(-1)), pos + 1


def test_compiled_w8a16_row_is_the_dequantized_product_in_fp32() -> None:
    """One row of a w8a16 layer in a compiled graph: the fused int8 x fp32 reduction, equal to the float
    product with the dequantized weight (the eager kernel rounds activations to bf16 on the way)."""
    from hwlm.model.quantized import Int8Linear

    torch.manual_seed(0)
    q = Int8Linear.from_linear(torch.nn.Linear(96, 80), "w8a16")
    x = torch.randn(1, 1, 96)
    want = F.linear(x, q.dequantized(), q.bias)
    got = torch.compile(q, fullgraph=True, dynamic=False)(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert (q(x) - want).abs().max() > 1e-5  # eager: bf16 activations, not this path
