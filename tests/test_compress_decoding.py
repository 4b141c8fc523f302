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


def test_compiled_w8a8_row_sums_the_integer_products_exactly() -> None:
    """One row of a w8a8 layer in a compiled graph: the fused reduction over the int8 codes times the int8-rounded
    activations (held as floats) equals the integer dot product, then the two scales; the worst case (every
    product 127^2 over 3072 inputs, a sum past 2^24) stays within fp32 round-off of it."""
    from hwlm.model.quantized import Int8Linear, quantize_rows

    torch.manual_seed(0)
    K = 3072  # gpt2-124m's widest input (mlp c_proj)
    q = Int8Linear.from_linear(torch.nn.Linear(K, 40, bias=False), "w8a8")
    row = torch.compile(q, fullgraph=True, dynamic=False)
    x = torch.randn(1, K)
    xq, s = quantize_rows(x)
    exact = (xq.double() @ q.weight.double().t()) * s.double() * q.scales.double()  # integer sums, then scales
    got = row(x)
    torch.testing.assert_close(got.double(), exact, rtol=2e-7, atol=0)
    eager = q(x)  # torch._int_mm: the same codes, int32 sums
    torch.testing.assert_close(got, eager, rtol=2e-7, atol=1e-7)
    # Scales of one and codes of 127 everywhere: the output is the integer sum itself, 3072 * 127^2 > 2^24.
    q.weight.fill_(127)
    q.scales.fill_(1.0)
    worst = float(row(torch.full((1, K), 127.0))[0, 0])
    assert worst > 2 ** 24 and abs(worst - K * 127 * 127) <= K * 127 * 127 * 2 ** -24


@pytest.mark.slow
def test_compiled_w8a8_step_equals_eager_and_calls_no_int_mm() -> None:
    from torch._inductor.utils import run_and_get_code

    from hwlm.compress import quantize_model

    torch.manual_seed(0)
    model = quantize_model(Transformer(ModelConfig.from_name("debug", n_embd=64)).eval(), "w8a8")
    prompt = [3, 14, 15, 9, 26]
    compiled = StaticDecoder(model, batch_size=1, max_len=model.cfg.block_size, compile=True)
    eager = StaticDecoder(model, batch_size=1, max_len=model.cfg.block_size)  # the module path: torch._int_mm
    compiled.prefill(torch.tensor([prompt]))
    eager.prefill(torch.tensor([prompt]))
    token, pos = torch.tensor([7]), torch.tensor([len(prompt)])
    got, code = run_and_get_code(compiled.step, token, pos)
    assert "_int_mm" not in "\n".join(code)  # every w8a8 row, the output layer too, is a fused reduction
    want = eager.step(token, pos)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    assert int(got.argmax()) == int(want.argmax())
    torch.testing.assert_close(compiled.cache.kv[1], eager.cache.kv[1], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_compiled_step_writes_each_rows_key_and_value_in_place() -> None:
    """Rows at different positions in one compiled step: each row's key/value lands at its own position of the
    caller's cache, written in place (no copy of a layer's keys or values), with the eager step's logits."""
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("debug", n_embd=64)).eval()
    decs = [StaticDecoder(model, batch_size=2, max_len=model.cfg.block_size, compile=c) for c in (True, False)]
    for dec in decs:
        dec.prefill_row(0, [3, 14, 15, 9, 26])
        dec.prefill_row(1, [5, 8])
    buffers = [buf.data_ptr() for buf in decs[0].cache.kv]
    tokens, pos = torch.tensor([7, 11]), torch.tensor([5, 2])
    for i in range(3):
        if i == 0:  # this model's first compiled step: its code
            got, code = run_and_get_code(decs[0].step, tokens, pos)
            _, B, K, L, D = decs[0].cache.kv[0].shape
            assert f"empty_strided_cpu(({B}, {K}, {L}, {D})" not in "\n".join(code)
        else:
            got = decs[0].step(tokens, pos)
        torch.testing.assert_close(got, decs[1].step(tokens, pos), rtol=0, atol=1e-5)
        tokens, pos = got.argmax(-1), pos + 1
    assert [buf.data_ptr() for buf in decs[0].cache.kv] == buffers
    for a, b in zip(decs[0].cache.kv, decs[1].cache.kv):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert decs[0].cache.kv[0][:, 1, :, 2:5].abs().sum() > 0  # row 1's new positions were written


def _mapping(addr: int) -> tuple[int, set[str]]:
    """AnonHugePages (KiB) and VmFlags of the mapping of this process that holds ``addr`` (/proc/self/smaps).

    The kernel merges neighbouring anonymous mappings with equal flags, so the KiB count can include
    memory other tests made huge; the ``hg`` flag is set only by madvise(MADV_HUGEPAGE) on this range.
    """
    inside, kib = False, 0
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(v, 16) for v in head.split("-"))
            inside = lo <= addr < hi
        elif inside and head == "AnonHugePages:":
            kib = int(line.split()[1])
        elif inside and head == "VmFlags:":
            return kib, set(line.split()[1:])
    return 0, set()


def _collapse_available() -> bool:
    import platform

    try:
        mode = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return False
    major, minor = (int(v) for v in platform.release().split(".")[:2])
    return "[never]" not in mode and (major, minor) >= (6, 1)


@pytest.mark.skipif(not _collapse_available(), reason="needs Linux >= 6.1 with transparent huge pages")
def test_huge_pages_backs_the_weights_by_2mib_pages_and_keeps_the_values() -> None:
    from hwlm.model.decoding import huge_pages

    torch.manual_seed(0)
    w = torch.randn(3 << 20)  # 12 MiB: at least 4 whole 2 MiB pages inside, wherever it starts
    before = w.clone()
    # no "hg"-absent precondition: malloc may hand out heap memory that an earlier test made huge (CI did)
    done = huge_pages([w, w[1:], torch.ones(10)])  # a view of the same storage counts once; 40 bytes: none
    assert done >= 4 << 20 and done % (2 << 20) == 0 and done <= w.numel() * 4
    kib, flags = _mapping(w.data_ptr() + (6 << 20))
    assert "hg" in flags and kib >= 2048
    assert torch.equal(w, before)
    assert huge_pages([w]) == done  # already huge: the same bytes again, nothing moved


class _Wrapper(torch.Tensor):
    """A wrapper tensor subclass (as torchao's quantized weights are): its storage has no data pointer."""

    @staticmethod
    def __new__(cls, inner: torch.Tensor) -> "_Wrapper":
        return torch.Tensor._make_wrapper_subclass(cls, inner.shape, dtype=inner.dtype, device=inner.device)

    def __init__(self, inner: torch.Tensor) -> None:
        self.inner = inner

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise NotImplementedError(func)


def test_huge_pages_skips_wrapper_subclasses_without_storage() -> None:
    """torchao's weights are wrapper subclasses: ``untyped_storage()`` works but its ``data_ptr()`` raises. They are
    skipped, and the plain tensors beside them still counted (``generate(compile=True)`` on such a model failed)."""
    from hwlm.model.decoding import huge_pages

    wrapped = _Wrapper(torch.zeros(3 << 20))
    with pytest.raises(RuntimeError):
        wrapped.untyped_storage().data_ptr()
    plain = torch.randn(3 << 20)
    assert huge_pages([wrapped]) == 0
    assert huge_pages([wrapped, plain]) == huge_pages([plain])


def test_greedy_ahead_gives_generates_tokens_and_stops_at_the_end_of_text() -> None:
    """The queued-ahead greedy loop (what generate(compile=True) runs on CUDA) on CPU tensors: generate's tokens."""
    from hwlm.model import generate
    from hwlm.model.decoding import greedy_ahead

    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("llama-debug")).eval()
    prompt = torch.randint(0, model.cfg.vocab_size, (7,)).tolist()
    ref = list(generate(model, prompt, 12, temperature=0))
    assert list(greedy_ahead(StaticDecoder(model, 1, 32), prompt, 12)) == ref
    eos = ref[4]
    upto = ref[:ref.index(eos) + 1]  # generate yields the end-of-text token, then stops
    assert list(greedy_ahead(StaticDecoder(model, 1, 32), prompt, 12, eos_id=eos)) == upto
    assert list(greedy_ahead(StaticDecoder(model, 1, 32), prompt, 0)) == []
    with pytest.raises(ValueError, match="must fit"):
        list(greedy_ahead(StaticDecoder(model, 1, 16), prompt, 12))


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@CUDA
@pytest.mark.parametrize("precision", ["fp32", "w8a16", "w4a16"])
def test_cuda_graph_decode_gives_the_eager_tokens(precision: str) -> None:
    """On CUDA ``generate(compile=True)`` records the step as a CUDA graph: greedy tokens equal eager decoding."""
    from hwlm.compress.quant import quantize_model
    from hwlm.model import generate

    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny")).cuda().eval()
    if precision != "fp32":
        model = quantize_model(model.to(torch.bfloat16), precision, group_size=32)
    prompt = torch.randint(0, model.cfg.vocab_size, (9,)).tolist()
    eager = list(generate(model, prompt, 24, temperature=0))
    graphs = list(generate(model, prompt, 24, temperature=0, compile=True))
    if precision == "fp32":
        assert graphs == eager
    else:  # bf16 sums in another order: a near tie may flip late, never the first tokens
        assert graphs[:8] == eager[:8] and sum(a == b for a, b in zip(graphs, eager)) >= 20


@CUDA
def test_a_2_4_model_on_cuda_keeps_the_faster_kernels_and_says_which() -> None:
    """after_load times 2:4 against dense at one row and keeps the faster (dense on an H200, torch 2.11)."""
    from hwlm.compress.prune import two_four_mask
    from hwlm.model.quantized import after_load, linear_targets

    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny")).cuda().to(torch.bfloat16).eval()
    with torch.no_grad():
        for parent, name in linear_targets(model, False):
            getattr(parent, name).weight.mul_(two_four_mask(getattr(parent, name).weight))
    x = torch.randint(0, model.cfg.vocab_size, (3, 8), device="cuda")
    with torch.no_grad():
        before = model(x)[0]
        after_load(model, {"pattern": "2:4"})
        torch.testing.assert_close(model(x)[0], before, rtol=2e-2, atol=2e-2)  # (3, 8): 3-D input either way
    assert model.sparse_kernels.split(":")[0] in ("2:4", "dense")
