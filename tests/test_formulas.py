"""hwlm.formulas against the real modules: parameters, FLOPs (torch's flop counter) and KV-cache bytes.

FLOP convention. ``forward_flops_per_token`` counts the full T x T attention score and
value products (no causal halving), like PaLM's MFU. ``torch.utils.flop_counter`` agrees when
attention runs through SDPA's math back end (it multiplies the full T x T matrices and then
masks). On CPU, torch 2.13's default fused kernel ``_scaled_dot_product_flash_attention_for_cpu``
has no flop formula registered, so the counter then sees the matmuls only; the tests below
pin both facts.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from hwlm.formulas import (forward_flops_per_token, kv_cache_bytes_per_token, param_count, train_flops_per_token,
                           training_memory)
from hwlm.model import KVCache, ModelConfig, Transformer

CONFIGS = [
    ("debug", {}),
    ("debug", dict(bias=False, tie_embeddings=False)),
    ("debug", dict(n_layer=3, n_head=4, n_embd=32, d_ff=48, block_size=16)),
    ("llama-debug", {}),
    ("llama-debug", dict(n_head=4, n_kv_head=2, bias=True, tie_embeddings=False)),
    ("llama-debug", dict(n_layer=3, n_head=4, n_kv_head=1, n_embd=32, d_ff=40)),
]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CONFIGS)]


def build(name: str, kw: dict) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig.from_name(name, vocab_size=100, **kw))


@pytest.mark.parametrize("name, kw", CONFIGS, ids=IDS)
def test_param_count_equals_the_module(name: str, kw: dict) -> None:
    model = build(name, kw)
    counted = param_count(model.cfg.to_arch())
    assert counted.total == sum(p.numel() for p in model.parameters())  # a tied matrix counts once
    assert counted.embedding == model.wte.weight.numel() + (model.wpe.weight.numel() if model.wpe else 0)


@pytest.mark.parametrize("preset", ["tiny", "mid", "gpt2-124m", "llama-tiny"])
def test_param_count_of_presets_on_the_meta_device(preset: str) -> None:
    cfg = ModelConfig.from_name(preset)
    with torch.device("meta"):
        model = Transformer(cfg)
    assert param_count(cfg.to_arch()).total == sum(p.numel() for p in model.parameters())


def count_flops(model: Transformer, idx: torch.Tensor, backward: bool = False) -> int:
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        logits, loss = model(idx, idx)
        if backward:
            loss.backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("name, kw", CONFIGS, ids=IDS)
def test_forward_flops_equal_torch_flop_counter(name: str, kw: dict) -> None:
    model = build(name, kw)
    B, T = 2, model.cfg.block_size
    idx = torch.randint(0, 100, (B, T))
    expected = forward_flops_per_token(model.cfg.to_arch(), T) * B * T
    assert count_flops(model, idx) == expected


@pytest.mark.parametrize("name, kw", CONFIGS[::3], ids=IDS[::3])
def test_training_flops_are_three_forwards(name: str, kw: dict) -> None:
    model = build(name, kw)
    B, T = 2, model.cfg.block_size
    idx = torch.randint(0, 100, (B, T))
    assert count_flops(model, idx, backward=True) == train_flops_per_token(model.cfg.to_arch(), T) * B * T


def test_cpu_flash_attention_is_invisible_to_the_flop_counter() -> None:
    """Pins the torch 2.13 gap described in the module docstring (update if torch registers it)."""
    model = build("debug", {})
    B, T = 2, model.cfg.block_size
    idx = torch.randint(0, 100, (B, T))
    with FlopCounterMode(display=False) as counter:
        model(idx)
    arch = model.cfg.to_arch()
    matmul_only = 2 * param_count(arch).matmul_active * B * T
    assert counter.get_total_flops() in (matmul_only, forward_flops_per_token(arch, T) * B * T)


@pytest.mark.parametrize("name, kw", CONFIGS[3:], ids=IDS[3:])
def test_kv_cache_bytes_per_token_equal_the_allocation(name: str, kw: dict) -> None:
    cfg = build(name, kw).cfg
    cache = KVCache(cfg, batch_size=3)
    allocated = sum(t.numel() * t.element_size() for t in cache.k + cache.v)
    assert allocated == kv_cache_bytes_per_token(cfg.to_arch(), bytes_per_elem=4) * 3 * cfg.block_size


# Training memory: what autograd saves, counted by the formulas, against torch's own saved-tensor hooks
# (exact byte counts, nothing timed). Each storage counts once (q, k, v are views of one buffer); the
# parameters are not activations.
def saved_bytes(model: Transformer, idx: torch.Tensor, kernel: str, precision: str, loss: str) -> int:
    import contextlib
    owned = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in owned:
            seen[s.data_ptr()] = s.nbytes()
        return t
    backend = sdpa_kernel(SDPBackend.MATH) if kernel == "math" else contextlib.nullcontext()
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    with backend, amp, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(idx, idx.roll(-1, 1), return_logits=loss == "full")
    return sum(seen.values())


MEMORY_CASES = [(k, p, loss) for k in ("flash", "math") for p in ("fp32", "bf16") for loss in ("full", "chunked")
                if not (p == "bf16" and loss == "chunked")]  # autocast always takes the full path


@pytest.mark.parametrize("kernel, precision, loss", MEMORY_CASES, ids=["-".join(c) for c in MEMORY_CASES])
@pytest.mark.parametrize("name, kw", CONFIGS, ids=IDS)
def test_saved_activations_equal_autograd_saved_tensors(name: str, kw: dict, kernel: str, precision: str,
                                                        loss: str) -> None:
    from hwlm.formulas import saved_activation_bytes_per_layer, saved_outside_layers_bytes
    model = build(name, kw)
    B, T = 2, model.cfg.block_size
    idx = torch.randint(0, 100, (B, T))
    spec = model.cfg.to_arch()
    layers = saved_activation_bytes_per_layer(spec, B * T, T, precision, kernel)
    outside = saved_outside_layers_bytes(spec, B * T, precision, loss)
    assert saved_bytes(model, idx, kernel, precision, loss) == model.cfg.n_layer * layers + outside


@pytest.mark.parametrize("mode", ["selective", "full"])
@pytest.mark.parametrize("name", ["debug", "llama-debug"])
def test_recompute_keeps_what_the_formulas_count(name: str, mode: str) -> None:
    """hwlm.model.recompute checkpoints a region (the attention sublayer, or the whole block): autograd
    saves nothing inside it but the region's input (the fp32 residual stream, kept for the replay)."""
    from hwlm.formulas import saved_activation_bytes_per_layer, saved_outside_layers_bytes
    model = build(name, {})
    model.recompute = mode
    B, T = 2, model.cfg.block_size
    idx = torch.randint(0, 100, (B, T))
    spec = model.cfg.to_arch()
    expected = model.cfg.n_layer * saved_activation_bytes_per_layer(spec, B * T, T, "fp32", "flash", mode)
    assert saved_bytes(model, idx, "flash", "fp32", "full") == expected + saved_outside_layers_bytes(spec, B * T)


def test_memory_options_are_checked() -> None:
    from hwlm.errors import ConfigError
    from hwlm.formulas import dtype_bytes, saved_activation_bytes_per_layer, saved_outside_layers_bytes
    spec = build("debug", {}).cfg.to_arch()
    with pytest.raises(ConfigError, match="recompute 'some' is unknown"):
        saved_activation_bytes_per_layer(spec, 64, 32, recompute="some")
    with pytest.raises(ConfigError, match="attention kernel 'fast'"):
        saved_activation_bytes_per_layer(spec, 64, 32, attention="fast")
    with pytest.raises(ConfigError, match="loss path 'fused'"):
        saved_outside_layers_bytes(spec, 64, loss="fused")
    with pytest.raises(ConfigError, match="unknown data type 'bf8'"):
        dtype_bytes("bf8")


def test_loss_transient_is_what_is_alive_at_the_loss_backward() -> None:
    """The logits the step holds, the saved gradient and the backward's product: measured as the (N, V)
    tensors alive when FusedCrossEntropy's backward returns (a dispatch mode sees every op's output)."""
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode

    from hwlm.formulas import loss_transient_bytes
    model = build("debug", {})
    B, T, V = 2, model.cfg.block_size, model.cfg.vocab_size
    idx = torch.randint(0, V, (B, T))
    live: list[weakref.ref] = []
    peak = [0]

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.numel() == B * T * V:
                    live.append(weakref.ref(t))
            alive = {r().untyped_storage().data_ptr(): r().untyped_storage().nbytes() for r in live if r() is not None}
            peak[0] = max(peak[0], sum(alive.values()))
            return out
    with Watch():
        logits, loss = model(idx, idx.roll(-1, 1))   # the training step holds the logits, as hwlm train does
        loss.backward()
    saved_gradient = B * T * V * 4
    assert peak[0] == loss_transient_bytes(model.cfg.to_arch(), B * T) + saved_gradient
    del logits


def test_launch_decision_and_planner_agree_on_memory() -> None:
    """One job, two callers: train/launch.py (DDP or FSDP?) and the planner on one device, no sharding."""
    from hwlm.plan import estimate_training
    from hwlm.plan.machine import machine_device
    from hwlm.plan.models import Model
    from hwlm.train.launch import training_bytes
    for preset, batch in (("gpt2-124m", 8), ("llama-tiny", 16)):
        cfg = ModelConfig.from_name(preset)
        spec = cfg.to_arch()
        model = Model(name=preset, spec=spec, source="preset", model_type="hwlm", seq_len=cfg.block_size)
        for kind, precision in (("gpu", "bf16"), ("cpu", "fp32")):
            dev = machine_device({precision: 1e14}, 1e12, 2**40, name="test", kind=kind, source="test")
            plan = estimate_training(model, 1e9, dev, 1, precision=precision, seq_len=cfg.block_size,
                                     global_batch=batch, micro_batch=batch, recompute="none", tp=1, pp=1,
                                     zero_stage=0, find_smallest=False)
            m = plan.memory
            # The launch decision asks whether DDP fits: its buckets hold gradients beside the activations.
            launch = training_bytes(spec, batch, cfg.block_size, precision, compiled=kind == "gpu", device_kind=kind)
            summed = m.weights + m.gradients + m.optimizer + m.activations
            assert launch == pytest.approx(summed, rel=1e-9), (preset, kind)
            # One process stepping once per batch never holds both: formulas' default, the planner's one-device figure.
            one = training_memory(spec, batch, cfg.block_size, precision, compiled=kind == "gpu", device_kind=kind)
            assert m.total == pytest.approx(one.total, rel=1e-9) and m.total < launch, (preset, kind)
            state = (4, 4, 8)  # hwlm's loop keeps fp32 weights, gradients and AdamW state under autocast (ADAM_FP32)
            n = param_count(spec).total
            assert (plan.memory.weights, plan.memory.gradients, plan.memory.optimizer) == tuple(b * n for b in state)


def test_korthikanti_count_is_the_papers_table_2() -> None:
    """Korthikanti et al. 2022 (arXiv:2205.05198), table 2, on their GPT-3 175B and MT-NLG 530B shapes, and
    section 5's 70% / 65% activation savings of selective recompute for those two models."""
    from hwlm.formulas import ArchSpec, korthikanti_activation_bytes_per_layer as kor
    for h, a, selective_saving in ((12288, 96, 0.70), (20480, 128, 0.65)):
        spec = ArchSpec(vocab_size=51200, d_model=h, n_layers=1, n_heads=a)
        s, b, t = 2048, 1, 8
        sbh = s * b * h
        assert kor(spec, s, b, attention="math") == pytest.approx(sbh * (34 + 5 * a * s / h))
        assert kor(spec, s, b, tp=t, attention="math", sequence_parallel=False) == pytest.approx(
            sbh * (10 + 24 / t + 5 * a * s / (h * t)))
        assert kor(spec, s, b, tp=t, attention="math") == pytest.approx(sbh / t * (34 + 5 * a * s / h))
        assert kor(spec, s, b, "selective", tp=t) == pytest.approx(34 * sbh / t)
        assert kor(spec, s, b, "full", tp=t, sequence_parallel=False) == pytest.approx(2 * sbh)
        assert kor(spec, s, b, "full", tp=t) == pytest.approx(2 * sbh / t)
        saving = 1 - kor(spec, s, b, "selective") / kor(spec, s, b, attention="math")
        assert saving == pytest.approx(selective_saving, abs=0.005)
        # FlashAttention keeps no s² tensors: no recompute holds what selective recompute does.
        assert kor(spec, s, b) == kor(spec, s, b, "selective")
        # No dropout: the two 1-byte masks go and softmax keeps only its output (2·a·s²·b).
        assert kor(spec, s, b, attention="math", dropout=False) == pytest.approx(sbh * (32 + 2 * a * s / h))


def test_korthikanti_count_follows_the_shape() -> None:
    """GQA and SwiGLU (Llama 3 70B: h 8192, 64 query and 8 key/value heads of 128, F 28672): the same tensors
    counted from the shape, 10 h + 2 (a + 2k) D + 2 a D + 6 F bytes per token in bf16."""
    from hwlm.errors import ConfigError
    from hwlm.formulas import ArchSpec, korthikanti_activation_bytes_per_layer as kor, korthikanti_outside_layers_bytes
    spec = ArchSpec(vocab_size=128256, d_model=8192, n_layers=80, n_heads=64, n_kv_heads=8, d_ff=28672,
                    mlp="swiglu", norm="rmsnorm", pos="rope")
    h, a, k, D, F, s = 8192, 64, 8, 128, 28672, 8192
    assert kor(spec, s) == pytest.approx(s * (10 * h + 2 * (a + 2 * k) * D + 2 * a * D + 6 * F))
    assert kor(spec, s, 2, tp=4) == pytest.approx(2 * kor(spec, s) / 4)
    assert korthikanti_outside_layers_bytes(spec, s, 1, 4) == pytest.approx(4 * s * h / 4 * (1 + 128256 / h))
    with pytest.raises(ConfigError, match="recompute 'some' is unknown"):
        kor(spec, s, recompute="some")
    with pytest.raises(ConfigError, match="tp=0"):
        kor(spec, s, tp=0)
