"""Transformer: shapes, loss, causality, KV cache, init, tied weights through safetensors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_model, save_model

from hwlm.model import KVCache, ModelConfig, Transformer

FLAVOURS = ["debug", "llama-debug"]


def make(name: str, **kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig.from_name(name, vocab_size=64, **kw))


@pytest.mark.parametrize("name", FLAVOURS)
def test_forward_shapes_and_loss_near_uniform_at_init(name: str) -> None:
    model = make(name)
    idx = torch.randint(0, 64, (3, 10))
    logits, loss = model(idx)
    assert logits.shape == (3, 10, 64) and loss is None
    logits, loss = model(idx, torch.randint(0, 64, (3, 10)))
    # Small init: predictions are close to uniform, loss close to ln(V).
    assert abs(loss.item() - math.log(64)) < 0.1
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    last, _ = model(idx, last_only=True)
    torch.testing.assert_close(last, model(idx)[0][:, -1:])


def test_ignore_index_minus_one_drops_positions() -> None:
    model = make("debug")
    idx = torch.randint(0, 64, (2, 8))
    targets = idx.clone()
    targets[:, :4] = -1
    logits, loss = model(idx, targets)
    expected = torch.nn.functional.cross_entropy(logits[:, 4:].reshape(-1, 64), idx[:, 4:].reshape(-1))
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("name", FLAVOURS)
def test_causal_future_tokens_do_not_change_the_past(name: str) -> None:
    model = make(name).eval()
    a = torch.randint(0, 64, (1, 12))
    b = a.clone()
    b[0, 7:] = (b[0, 7:] + 1) % 64
    la, lb = model(a)[0], model(b)[0]
    torch.testing.assert_close(la[:, :7], lb[:, :7])
    assert not torch.allclose(la[:, 7:], lb[:, 7:])


@pytest.mark.parametrize("name", FLAVOURS)
def test_kv_cache_prefill_chunks_and_decode_match_full_forward(name: str) -> None:
    model = make(name).eval()
    idx = torch.randint(0, 64, (2, 20))  # a batch of two sequences
    full = model(idx)[0]
    cache = KVCache(model.cfg, batch_size=2)
    with torch.inference_mode():
        parts = [model(idx[:, :8], cache=cache, start_pos=0)[0],    # prefill
                 model(idx[:, 8:13], cache=cache, start_pos=8)[0]]  # chunked prefill (mask needed)
        parts += [model(idx[:, t:t + 1], cache=cache, start_pos=t)[0] for t in range(13, 20)]  # decode
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", FLAVOURS)
def test_batch_one_decoding_matches_the_full_forward_in_float32_and_under_autocast(name: str) -> None:
    """Single-row steps take the gemv path (``linear``); under autocast they must fall back to F.linear."""
    model = make(name).eval()
    idx = torch.randint(0, 64, (1, 9))
    full = model(idx)[0]
    for autocast in (False, True):
        cache = KVCache(model.cfg, batch_size=1)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            parts = [model(idx[:, :5], cache=cache)[0]]
            parts += [model(idx[:, t:t + 1], cache=cache, start_pos=t)[0] for t in range(5, 9)]
        tol = 5e-2 if autocast else 1e-5
        torch.testing.assert_close(torch.cat(parts, dim=1).float(), full, atol=tol, rtol=tol)



@pytest.mark.parametrize("name, kw", [("debug", {}), ("debug", {"bias": False}), ("llama-debug", {})])
def test_batch_one_decode_step_equals_the_general_path_exactly(name: str, kw: dict) -> None:
    """``decode_step`` (forward's batch-1 path without a gradient) gives the general path's numbers and cache."""
    model = make(name, **kw).eval()
    with torch.no_grad():
        model.wte.weight.mul_(10)  # larger activations than the init's, so a difference would show
    idx = torch.randint(0, 64, (1, 12))
    fast, slow = KVCache(model.cfg, batch_size=1), KVCache(model.cfg, batch_size=1)
    state = model.decode_state()
    with torch.no_grad():
        model(idx[:, :4], cache=fast)
        model(idx[:, :4], cache=slow)
        for t in range(4, 12):
            with torch.enable_grad():  # a gradient is needed: forward takes the general path
                expected = model(idx[:, t:t + 1], cache=slow, start_pos=t)[0]
            assert expected.requires_grad
            got = (model.decode_step(int(idx[0, t]), fast, t, state) if t % 2 else  # int token, reused state
                   model(idx[:, t:t + 1], cache=fast, start_pos=t)[0])  # tensor token, through forward
            torch.testing.assert_close(got.view(1, 1, -1), expected.detach(), rtol=0, atol=0)
    for a, b in zip(fast.k + fast.v, slow.k + slow.v):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_kv_cache_keeps_k_and_v_of_a_layer_in_one_buffer() -> None:
    cfg = ModelConfig.from_name("debug", vocab_size=64)
    cache = KVCache(cfg, batch_size=1)
    assert cache.k[1].data_ptr() == cache.kv[1][0].data_ptr() and cache.v[1].data_ptr() == cache.kv[1][1].data_ptr()

def test_kv_cache_is_preallocated_per_layer_and_refuses_overflow() -> None:
    cfg = ModelConfig.from_name("llama-debug", vocab_size=64)
    cache = KVCache(cfg, batch_size=3)
    assert len(cache.k) == cfg.n_layer
    assert cache.k[0].shape == (3, cfg.n_kv_head, cfg.block_size, cfg.head_dim)
    with pytest.raises(ValueError, match="exceed block_size 32"):
        Transformer(cfg)(torch.zeros(1, 4, dtype=torch.long), cache=KVCache(cfg, 1), start_pos=30)


def test_grouped_query_attention_equals_repeated_heads() -> None:
    """A GQA layer equals a full multi-head layer whose k/v heads are repeated."""
    gqa = make("llama-debug", n_head=4, n_kv_head=2).eval()
    mha = make("llama-debug", n_head=4, n_kv_head=4).eval()
    q, kv, d = 16, 8, 4  # q rows, kv rows per k or v, head size
    with torch.no_grad():
        for name, p in mha.named_parameters():
            src = dict(gqa.named_parameters())[name]
            if name.endswith("attn.c_attn.weight"):
                wq, wk, wv = src.split((q, kv, kv))
                rep = lambda w: w.view(2, d, -1).repeat_interleave(2, dim=0).reshape(4 * d, -1)  # noqa: E731
                p.copy_(torch.cat((wq, rep(wk), rep(wv))))
            else:
                p.copy_(src)
    idx = torch.randint(0, 64, (2, 9))
    torch.testing.assert_close(gqa(idx)[0], mha(idx)[0], atol=1e-5, rtol=1e-5)


def test_gpt2_init_scales_residual_projections() -> None:
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny", vocab_size=256))
    std = lambda t: t.detach().std().item()  # noqa: E731
    assert std(model.h[0].attn.c_attn.weight) == pytest.approx(0.02, rel=0.05)
    assert std(model.h[0].mlp.c_proj.weight) == pytest.approx(0.02 / math.sqrt(2 * 4), rel=0.05)
    assert torch.all(model.h[0].attn.c_attn.bias == 0) and torch.all(model.h[0].ln_1.weight == 1)


@pytest.mark.parametrize("name", FLAVOURS)
@pytest.mark.parametrize("tied", [True, False])
def test_weights_survive_safetensors_round_trip(tmp_path: Path, name: str, tied: bool) -> None:
    model = make(name, tie_embeddings=tied)
    path = tmp_path / "model.safetensors"
    save_model(model, str(path))
    torch.manual_seed(1)
    other = Transformer(model.cfg)
    missing, unexpected = load_model(other, str(path))
    assert not missing and not unexpected
    assert (other.lm_head.weight is other.wte.weight) == tied
    for (n, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), n
    idx = torch.randint(0, 64, (1, 5))
    torch.testing.assert_close(model(idx)[0], other(idx)[0])


def test_tied_parameters_count_once() -> None:
    tied, untied = make("debug"), make("debug", tie_embeddings=False)
    assert untied.num_params() - tied.num_params() == 64 * 16


def test_dropout_is_active_only_in_training() -> None:
    model = make("debug", dropout=0.5)
    idx = torch.randint(0, 64, (2, 8))
    model.train()
    assert not torch.equal(model(idx)[0], model(idx)[0])
    model.eval()
    torch.testing.assert_close(model(idx)[0], model(idx)[0])


def test_fused_cross_entropy_equals_torch_in_value_and_gradient() -> None:
    from hwlm.model.transformer import FusedCrossEntropy

    torch.manual_seed(0)
    logits = torch.randn(40, 33, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 33, (40,))
    targets[:5] = -1
    ours = FusedCrossEntropy.apply(logits, targets)
    (grad_ours,) = torch.autograd.grad(ours * 3, logits)
    ref = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-1)
    (grad_ref,) = torch.autograd.grad(ref * 3, logits)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(grad_ours, grad_ref)


def test_training_loss_and_eval_loss_agree() -> None:
    model = make("llama-debug")
    idx, targets = torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8))
    train_loss = model(idx, targets)[1]  # fused path (gradient needed)
    with torch.no_grad():
        eval_loss = model(idx, targets)[1]  # torch's cross_entropy
    torch.testing.assert_close(train_loss.detach(), eval_loss)


@pytest.mark.parametrize("name", FLAVOURS)
@pytest.mark.parametrize("tied", [True, False])
def test_fused_output_layer_and_loss_equal_the_plain_path(name: str, tied: bool) -> None:
    """return_logits=False runs LinearCrossEntropy; V = 8192 makes it loop over several row chunks."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name(name, vocab_size=8192, tie_embeddings=tied))
    idx, targets = torch.randint(0, 8192, (4, 32)), torch.randint(0, 8192, (4, 32))
    targets[0, :7] = -1
    _, plain = model(idx, targets)
    plain.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    logits, fused = model(idx, targets, return_logits=False)
    (fused * 2).backward()
    assert logits is None
    torch.testing.assert_close(fused, plain)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, 2 * expected[n], atol=1e-6, rtol=1e-4, msg=n)


GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, GPU])])
@pytest.mark.parametrize("return_logits", [False, True])
def test_torch_compile_full_graph_matches_eager_loss_and_gradients(return_logits: bool, device: str) -> None:
    """torch.compile(model) traces the training step in one graph (no data-dependent Python branch
    in the fused losses: a graph break there once crashed a compiled run on a GPU) and computes
    what eager computes. return_logits=False is the train loop's fused path, True the FusedCrossEntropy one.

    Tolerance: on the CPU every kernel here sums in a fixed order, so 1e-6 holds. On CUDA the embedding
    backward (eager's and inductor's) adds each position's gradient into its token's row with atomics, in
    no fixed order, and inductor fuses and reorders the other reductions: the compiled and eager sums of
    the same n addends then differ by up to about n * eps_fp32 * max|addend| (two recursive sums of n
    terms each lie within (n - 1) * eps/2 * sum|x| of the exact one; Higham 2002, section 4.2). n is at
    most 2 * B * T here (the tied matrix gets B*T embedding rows and the output layer's sum over B*T rows),
    and with cross-entropy gradients no addend exceeds the largest gradient entry, so atol is
    2 * B * T * eps * max|grad| per tensor (about 1.5e-5 of its largest entry): a bound from fp32
    arithmetic rather than a number chosen to pass. A deterministic mode would not make eager and
    compiled sum in the same order, so it would not allow a tighter bound."""
    model = make("debug").to(device)
    idx, targets = torch.randint(0, 64, (2, 16), device=device), torch.randint(0, 64, (2, 16), device=device)
    targets[0, :3] = -1
    _, eager = model(idx, targets, return_logits=return_logits)
    eager.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)  # fullgraph: any graph break is an error
    _, loss = compiled(idx, targets, return_logits=return_logits)
    loss.backward()
    assert abs(loss.item() - eager.item()) < 1e-5
    terms = 2 * idx.numel()
    for n, p in model.named_parameters():
        atol = 1e-6 if device == "cpu" else terms * torch.finfo(torch.float32).eps * float(expected[n].abs().max())
        torch.testing.assert_close(p.grad, expected[n], atol=max(atol, 1e-6), rtol=1e-4,
                                   msg=lambda m, n=n, a=atol: f"{n} (atol {a:.3g}): {m}")


@pytest.mark.parametrize("name", ["debug", "llama-tiny"])
def test_evaluation_loss_in_row_chunks_equals_the_full_logits_loss(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a gradient, ``return_logits=False`` computes the loss in row chunks (three here:
    of 512 rows at V = 2048 for 1,152 rows, the last one short), equal to cross-entropy over the whole logits."""
    torch.manual_seed(0)
    m = Transformer(ModelConfig.from_name(name, vocab_size=2048, block_size=128)).eval()
    x, y = torch.randint(0, 2048, (9, 128)), torch.randint(0, 2048, (9, 128))
    y[0, :40] = -1
    import hwlm.model.transformer as tr
    calls = []
    real = tr.chunked_cross_entropy
    monkeypatch.setattr(tr, "chunked_cross_entropy", lambda *a: calls.append(a[0].shape) or real(*a))
    with torch.no_grad():
        full = m(x, y)[1]
        assert not calls  # return_logits=True keeps the whole-logits loss
        logits, chunked = m(x, y, return_logits=False)
    assert calls == [(9 * 128, m.cfg.n_embd)]  # the chunked path was the one taken
    assert logits is None and torch.allclose(chunked, full, rtol=1e-6, atol=1e-6)
