"""``plan serve``: the step-time formula, the continuous-batching simulation's invariants, fleet sizing and
its one-line refusals. Formulas and invariants are pinned, not fitted numbers."""

from __future__ import annotations

import json
import math

import pytest

from hwlm.cli import main
from hwlm.formulas import forward_flops_per_token
from hwlm.plan import ServingJob, estimate_serving, get_model
from hwlm.plan.jobs import resolve_hardware
from hwlm.plan.serve_step import step_model as _step_model
from hwlm.plan.serving import simulate
from hwlm.plan.software import ENGINES


def _sm(model="llama-3.1-8b", hardware="h100-sxm", **kw):
    job = ServingJob(model=model, hardware=hardware, concurrency=1, **kw)
    dev = resolve_hardware(job.hardware)
    return _step_model(job, get_model(job.model), dev, ENGINES[job.engine or "vllm"]), dev


def test_decode_step_is_the_roofline_of_weights_and_kv() -> None:
    sm, dev = _sm()
    m = sm.m
    B, S = 8, 8 * 1000
    read = m.params.total * 2.0 + S * sm.kv_tok
    t_mem = read / (dev.memory_bw * sm.bw_eff)
    f = 2.0 * m.params.matmul_active * B + (forward_flops_per_token(m.spec, 1) - forward_flops_per_token(m.spec, 0)) * S
    t_fl = f / (dev.peak_flops("bf16") * sm.mm_eff)
    assert t_mem > t_fl  # decode at batch 8 is bandwidth-bound
    assert sm.seconds(B, S) == pytest.approx(t_mem + m.spec.n_layers * sm.layer_overhead_s)
    # A long prefill is compute-bound and grows with its tokens.
    assert sm.seconds(0, 0, [(4096, 0)]) > 2 * sm.seconds(0, 0, [(1024, 0)])


def test_one_request_alone_is_one_prefill_then_batch_one_steps() -> None:
    sm, _ = _sm()
    r = simulate(sm, 512, 64, 2, 256, 8192, concurrency=1)
    assert r.ttft[0] == pytest.approx(sm.seconds(0, 0, [(512, 0)]))
    tokens = sum(n for _, n in r.itl)
    mean_itl = sum(dt * n for dt, n in r.itl) / tokens
    assert tokens == 2 * 63
    assert mean_itl == pytest.approx(sm.seconds(1, 512 + 32), rel=0.02)


def test_closed_loop_obeys_littles_law() -> None:
    e = estimate_serving(ServingJob(model="llama-3.1-8b", hardware="h100-sxm", concurrency=48, engine="vllm"))
    # Little: users = throughput x time per request; requests here end after TTFT + (gen - 1) inter-token gaps.
    latency = 48 / e.requests_per_s
    assert latency > e.ttft_p50_s + (e.gen_len - 1) * e.itl_p50_s * 0.8
    assert e.mean_batch == pytest.approx(48, rel=0.1)


def test_more_load_more_throughput_and_slower_tokens() -> None:
    low = estimate_serving(ServingJob(model="llama-3.1-8b", hardware="h100-sxm", concurrency=4))
    high = estimate_serving(ServingJob(model="llama-3.1-8b", hardware="h100-sxm", concurrency=128))
    assert high.output_tokens_per_s > 5 * low.output_tokens_per_s
    assert high.itl_p50_s > low.itl_p50_s
    assert high.output_tokens_per_s <= high.capacity_requests_per_s * high.gen_len * 1.05


def test_kv_cache_limits_the_batch() -> None:
    e = estimate_serving(ServingJob(model="llama-2-70b", hardware="h100-sxm", devices=2, concurrency=512,
                                    prompt_len=3000, gen_len=1000))
    per_req = 4000
    assert e.limited_by == "kv-cache" and e.batch_limit == e.kv_capacity_tokens // per_req
    assert e.mean_batch <= e.batch_limit and e.batch_limit < ENGINES["vllm"].max_batch
    assert any("wait in the queue" in n for n in e.notes)


def test_moe_decode_reads_only_the_touched_experts() -> None:
    sm, _ = _sm("mixtral-8x7b", devices=2)
    m = sm.m
    one = sm.seconds(1, 100)
    many = sm.seconds(64, 6400)
    dense_read = m.params.total * 2.0 / 2 / (sm.dev.memory_bw * sm.bw_eff)
    assert one < 0.5 * dense_read  # 2 of 8 experts at batch 1
    assert many > 0.9 * dense_read  # nearly every expert at batch 64


def test_rate_with_an_slo_sizes_the_fleet() -> None:
    job = ServingJob(model="llama-3.1-8b", hardware="h100-sxm", rate=60.0, slo_ttft=0.2, slo_itl=0.05)
    e = estimate_serving(job)
    assert e.replicas >= math.ceil(60.0 / e.capacity_requests_per_s)
    assert e.ttft_p90_s <= 0.2 and e.itl_p90_s <= 0.05
    assert e.requests_per_s == 60.0


@pytest.mark.parametrize("argv, message", [
    (["--concurrency", "4", "--slo-ttft", "0.0001"], r"--slo-ttft 0.0001 s is below the .* one request alone takes"),
    (["--rate", "1e9"], r"needs more than 131,072 x h100-sxm"),
    (["--concurrency", "4", "--engine", "llama.cpp", "--hardware", "tpu-v5e"], r"does not run on tpu-v5e"),
    (["--concurrency", "4", "--prompt-len", "200000"], r"exceed llama-3.1-8b's 131,072-token context"),
])
def test_refusals_are_one_line(capsys, argv, message) -> None:
    base = ["plan", "serve", "--model", "llama-3.1-8b"]
    if "--hardware" not in argv:
        base += ["--hardware", "h100-sxm"]
    assert main(base + argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    import re
    assert re.search(message, err), err


def test_cli_json_and_this_machine(tmp_path, capsys) -> None:
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps({"version": 1, "kind": "hwlm-calibration", "machine": {"memory_bytes": 8e9}, "entries": [
        {"device": "this-machine", "dtype": "fp32", "phase": "matmul", "efficiency": 1.0, "measured": 5e10},
        {"device": "this-machine", "dtype": "fp32", "phase": "membw", "efficiency": 1.0, "measured": 1e10}]}))
    assert main(["plan", "serve", "--model", "tiny", "--calibration", str(cal), "--precision", "fp32",
                 "--concurrency", "4", "--prompt-len", "32", "--gen-len", "16", "--json", "--explain"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["hardware"] == "this-machine" and d["engine"] == "hwlm" and d["output_tokens_per_s"] > 0
    assert {"kv_capacity_tokens", "capacity", "batch_limit"} <= {t["name"] for t in d["terms"]}


def test_energy_per_token_follows_power_and_pue() -> None:
    base = dict(model="llama-3.1-8b", hardware="h100-sxm", concurrency=16)
    a = estimate_serving(ServingJob(**base, power_w=500.0, pue=1.0))
    b = estimate_serving(ServingJob(**base, power_w=500.0, pue=1.5))
    assert a.energy_per_token_j == pytest.approx(500.0 / a.output_tokens_per_s)
    assert b.energy_per_token_j == pytest.approx(1.5 * a.energy_per_token_j)
    tpu = estimate_serving(ServingJob(model="llama-3.1-8b", hardware="tpu-v6e", concurrency=4))
    assert tpu.energy_per_token_j is None and any("no published TDP" in n for n in tpu.notes)


def test_an_slo_below_one_request_says_what_would_work() -> None:
    import re
    with pytest.raises(Exception) as err:
        estimate_serving(ServingJob(model="llama-2-70b", hardware="h100-sxm", devices=2, concurrency=4, slo_itl=0.0125))
    m = re.search(r"use --devices (\d+) \(([0-9.]+) s alone\)", str(err.value))
    assert m and int(m.group(1)) > 2 and float(m.group(2)) <= 0.0125
    ok = estimate_serving(ServingJob(model="llama-2-70b", hardware="h100-sxm", devices=int(m.group(1)), concurrency=1,
                                     slo_itl=0.0125))
    assert ok.single_itl_s <= 0.0125


def _cpu_sm(tmp_path, engine="hwlm", precision="fp32", decode_eff=None, decode_rows=None, prefill_eff=None,
            prefill_rows=None, membw_eff=1.0):
    """A step model on a this-machine calibration (CPU, additive terms), optionally with a measured decode rate
    and prefill rate, and their curves by rows ({rows: efficiency})."""
    tm = {"device": "this-machine", "dtype": "fp32"}
    entries = [{**tm, "phase": "matmul", "efficiency": 1.0, "measured": 1e11},
               {**tm, "phase": "membw", "efficiency": membw_eff, "measured": 2e10}]
    if decode_eff is not None:
        entries.append({**tm, "phase": "decode", "efficiency": decode_eff, "measured": decode_eff * 2e10})
    if prefill_eff is not None:
        entries.append({**tm, "phase": "prefill", "efficiency": prefill_eff})
    for phase, curve in (("decode_rows", decode_rows), ("prefill_rows", prefill_rows)):
        entries += [{**tm, "phase": phase, "efficiency": e, "rows": r} for r, e in (curve or {}).items()]
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps({"version": 1, "kind": "hwlm-calibration", "machine": {"memory_bytes": 8e9},
                               "entries": entries}))
    job = ServingJob(model="mid", hardware="this-machine", calibration=str(cal), concurrency=1, precision=precision,
                     engine=engine)
    dev = resolve_hardware(job.hardware, job.calibration)
    return _step_model(job, get_model("mid"), dev, ENGINES[engine]), dev


def test_attention_flops_per_pair_is_the_context_term_of_forward_flops() -> None:
    from hwlm.formulas import attention_flops_per_pair
    spec = get_model("llama-3.1-8b").spec
    assert forward_flops_per_token(spec, 777) - forward_flops_per_token(spec, 0) == pytest.approx(
        777 * attention_flops_per_pair(spec))


def test_cpu_terms_add_and_hwlm_pads_attention_to_the_longest_row(tmp_path) -> None:
    """On a CPU the weight stream, the products and the element-wise passes add; hwlm's packed step scores
    rows x most queries x longest context pairs and runs the output layer on each row's last token only."""
    from hwlm.formulas import attention_flops_per_pair, lm_head_flops_per_token
    sm, dev = _cpu_sm(tmp_path)
    m, spec = sm.m, sm.m.spec
    assert dev.kind == "cpu" and sm.engine.padded_attention and sm.kv_tok == pytest.approx(
        spec.n_layers * 2 * spec.d_model * 4.0)  # fp32 cache: 4 bytes per element
    B, ctx, longest, chunk = 7, 7 * 150.0, 190.0, (128, 0)
    rows, tokens = B + 1, B + 128
    bw, peak = dev.memory_bw * sm.bw_eff, dev.peak_flops("fp32") * sm.mm_eff
    t_mem = (m.params.total * 4.0 + (rows * longest + 128) * sm.kv_tok) / bw
    f = 2.0 * m.params.matmul_active * tokens - (tokens - rows) * lm_head_flops_per_token(spec) \
        + attention_flops_per_pair(spec) * rows * 128 * longest
    ew = tokens * spec.n_layers * sm.act_traffic * 34 * spec.d_model * 2.0 / (dev.memory_bw * sm.ew_eff)
    want = t_mem + f / peak + ew + spec.n_layers * sm.layer_overhead_s
    assert sm.forward_seconds(B, ctx, [chunk], max_ctx=longest) == pytest.approx(want)
    # A lone row is the model's own forward (no padding): its prompt's queries score their own prefix.
    alone = 2.0 * m.params.matmul_active * 128 - 127 * lm_head_flops_per_token(spec) \
        + attention_flops_per_pair(spec) * 128 * 64
    assert sm.forward_seconds(0, 0.0, [chunk]) == pytest.approx(
        (m.params.total * 4.0 + 128 * sm.kv_tok) / bw + alone / peak + 128 * ew / tokens
        + spec.n_layers * sm.layer_overhead_s)


def test_hwlm_engine_adds_its_host_work_per_step_and_row_and_vllm_hides_it(tmp_path) -> None:
    """hwlm's synchronous loop samples and sends events after each forward: a step costs its forward plus
    ``step_host_s`` and ``row_host_s`` per row (decode rows and prompt chunks alike); vLLM overlaps it (0)."""
    sm, _ = _cpu_sm(tmp_path, decode_eff=0.25)
    hwlm = ENGINES["hwlm"]
    assert hwlm.step_host_s > 0 and hwlm.row_host_s > 0
    assert ENGINES["vllm"].step_host_s == ENGINES["vllm"].row_host_s == 0
    for decode, chunks in ((1, []), (7, [(128, 0)]), (32, []), (0, [(64, 0), (64, 0)])):
        ctx = 150.0 * decode
        want = sm.forward_seconds(decode, ctx, chunks) + hwlm.step_host_s + hwlm.row_host_s * (decode + len(chunks))
        assert sm.seconds(decode, ctx, chunks) == pytest.approx(want)
    assert sm.seconds(0, 0.0) == sm.forward_seconds(0, 0.0)  # an empty step is nothing
    vllm, _ = _cpu_sm(tmp_path, engine="vllm", decode_eff=0.25)
    assert vllm.seconds(8, 1200.0) == vllm.forward_seconds(8, 1200.0)


def test_a_calibrated_decode_rate_holds_the_first_row(tmp_path) -> None:
    """bench infer's decode rate is a whole batch-1 step: one row costs exactly its bytes at that rate, and
    each further row adds its products and element-wise passes (and its KV reads) on top."""
    from hwlm.formulas import attention_flops_per_pair
    sm, dev = _cpu_sm(tmp_path, decode_eff=0.25)
    m, spec = sm.m, sm.m.spec
    assert sm.decode_calibrated and sm.layer_overhead_s == 0.0
    bw, peak = dev.memory_bw * sm.bw_eff, dev.peak_flops("fp32") * sm.mm_eff
    att = attention_flops_per_pair(spec) * 150  # one row's scores at 150 keys (counted for every row)
    one = sm.forward_seconds(1, 150.0)
    assert one == pytest.approx((m.params.total * 4.0 + 150 * sm.kv_tok) / bw + att / peak)
    ew = spec.n_layers * sm.act_traffic * 34 * spec.d_model * 2.0 / (dev.memory_bw * sm.ew_eff)
    two = sm.forward_seconds(2, 300.0, max_ctx=150.0)
    assert two - one == pytest.approx(150 * sm.kv_tok / bw + (2.0 * m.params.matmul_active + att) / peak + ew)


def test_hwlm_budget_is_for_prompts_only_and_one_packed_forward(tmp_path) -> None:
    """hwlm's scheduler spends its prefill budget on prompt tokens only (decode rows ride free); vLLM's
    counts the decode rows against it."""
    assert not ENGINES["hwlm"].budget_counts_decode and ENGINES["vllm"].budget_counts_decode
    assert ENGINES["hwlm"].fused_prefill and ENGINES["hwlm"].last_token_logits
    sm, _ = _cpu_sm(tmp_path)
    # 4 users, 512-token budget, 128-token prompts arriving together: all four prompts in the first step.
    r = simulate(sm, 128, 8, 4, 32, 512, concurrency=4, stagger=0.0)
    assert r.ttft and max(r.ttft) == pytest.approx(min(r.ttft))
    assert max(r.ttft) == pytest.approx(sm.seconds(0, 0.0, [(128, 0)] * 4))


def test_curve_at_is_log_linear_between_points_and_flat_beyond() -> None:
    from hwlm.plan.serve_step import curve_at
    c = ((1, 0.4), (2, 0.2), (8, 0.3))
    assert [curve_at(c, r) for r in (0.5, 1, 2, 8, 100)] == [0.4, 0.4, 0.2, 0.3, 0.3]
    assert curve_at(c, 4) == pytest.approx(0.2 + 0.5 * 0.1)  # halfway from 2 to 8 in log(rows)
    assert curve_at(c, 1.5) == pytest.approx(0.4 - 0.2 * math.log(1.5) / math.log(2))


def test_a_calibrated_decode_curve_prices_each_batch_at_its_own_measured_rate(tmp_path) -> None:
    """bench infer's decode step at B rows (the curve) holds B rows' products: a step of B <= the last measured
    rows costs its bytes at the curve's rate there; rows beyond add their products and element-wise passes."""
    from hwlm.formulas import attention_flops_per_pair
    from hwlm.plan.serve_step import curve_at
    sm, dev = _cpu_sm(tmp_path, decode_eff=0.4, decode_rows={1: 0.4, 2: 0.2, 8: 0.3})
    m, spec = sm.m, sm.m.spec
    assert sm.decode_curve == ((1, 0.4), (2, 0.2), (8, 0.3))
    peak = dev.peak_flops("fp32") * sm.mm_eff
    ew = spec.n_layers * sm.act_traffic * 34 * spec.d_model * 2.0 / (dev.memory_bw * sm.ew_eff)
    for b in (1, 2, 4, 8, 12):
        ctx = 150.0 * b
        t = (m.params.total * 4.0 + ctx * sm.kv_tok) / (dev.memory_bw * curve_at(sm.decode_curve, b)) \
            + attention_flops_per_pair(spec) * ctx / peak + max(0, b - 8) * (2.0 * m.params.matmul_active / peak + ew)
        assert sm.forward_seconds(b, ctx, max_ctx=150.0) == pytest.approx(t)
    # two rows cost more than one here, as measured (a matrix product's small-row kernel)
    assert sm.forward_seconds(2, 300.0, max_ctx=150.0) > 1.9 * sm.forward_seconds(1, 150.0)
    e = estimate_serving(ServingJob(model="mid", hardware="this-machine", calibration=str(tmp_path / "cal.json"),
                                    concurrency=4, prompt_len=64, gen_len=8, precision="fp32", engine="hwlm",
                                    requests=20))
    term = next(t for t in e.terms if t.name == "decode_eff_at_batch_limit")
    assert term.value == pytest.approx(100 * curve_at(sm.decode_curve, 32)) and "1: 0.4, 2: 0.2, 8: 0.3" in term.formula


def test_a_measured_prefill_rate_holds_its_weights_and_rides_the_decode_step(tmp_path) -> None:
    """A prompt alone costs its FLOPs at the measured prefill rate (the curve's at its tokens); in a decode step
    the weights are streamed once, so the prompt's share is less one weight stream at copy bandwidth."""
    from hwlm.formulas import attention_flops_per_pair, lm_head_flops_per_token
    from hwlm.plan.serve_step import curve_at
    sm, dev = _cpu_sm(tmp_path, decode_eff=0.4, prefill_eff=0.6, prefill_rows={128: 0.5, 512: 0.7}, membw_eff=0.9)
    m, spec = sm.m, sm.m.spec
    assert sm.prefill_calibrated and sm.copy_eff == 0.9 and sm.mm_eff == pytest.approx(0.6)
    raw = dev.peak_flops("fp32")
    for n in (64, 128, 256, 512):
        f = 2.0 * m.params.matmul_active * n - (n - 1) * lm_head_flops_per_token(spec)
        att = attention_flops_per_pair(spec) * n * n / 2
        assert sm.forward_seconds(0, 0.0, [(n, 0)]) == pytest.approx(f / (raw * curve_at(sm.prefill_curve, n)) + att / (
            raw * sm.mm_eff))
    one = sm.forward_seconds(1, 150.0)
    both = sm.forward_seconds(1, 150.0, [(512, 0)], max_ctx=150.0)
    f = 2.0 * m.params.matmul_active * 512 - 511 * lm_head_flops_per_token(spec)
    pad = attention_flops_per_pair(spec) * 2 * 512 * 512 - attention_flops_per_pair(spec) * 150  # 2 rows x 512 x 512
    kv = (2 * 512 - 150 + 512) * sm.kv_tok / (dev.memory_bw * sm.bw_eff)  # both rows read to 512, the chunk writes
    assert both - one == pytest.approx(f / (raw * 0.7) - m.params.total * 4.0 / (dev.memory_bw * 0.9)
                                       + pad / (raw * sm.mm_eff) + kv)


def test_the_engine_cap_holds_per_data_parallel_rank() -> None:
    """vLLM runs one engine core, with its own scheduler and max_num_seqs, per DP rank: a replica of ep
    data-parallel attention groups runs up to ep x max_batch sequences (KV allowing)."""
    from hwlm.plan.serving import MAX_BATCH_PER_DP_RANK
    kw = dict(model="qwen3-30b-a3b", hardware="h200", concurrency=64, prompt_len=256, gen_len=64, requests=200)
    for ep in (1, 2, 4):
        e = estimate_serving(ServingJob(devices=ep, ep=ep if ep > 1 else None, **kw))
        assert e.batch_limit == ep * ENGINES["vllm"].max_batch
        assert e.limited_by == "engine max_batch 256" + (f" x {ep} data-parallel ranks" if ep > 1 else "")
    e = estimate_serving(ServingJob(devices=2, ep=2, max_batch=16, **kw))
    assert e.batch_limit == 32 and "applies per DP rank" in MAX_BATCH_PER_DP_RANK
    assert "x 2 ep groups" in next(t for t in e.terms if t.name == "batch_limit").formula


def test_plan_serve_and_recommend_size_the_same_fleet(capsys) -> None:
    """One default request count (ServingJob's) for both, and a saturated run that fills every slot: DeepSeek-V3
    at 20 requests/s on H200 nodes was 2 replicas in recommend (300 requests) and 1 in plan serve (2000)."""
    from hwlm.plan.recommend import recommend
    work = {"rate": 20.0, "prompt_len": 512, "gen_len": 256}
    r = recommend("deepseek-v3", serving=work, precision="fp8", hardware=["h200"], objective="cost")
    o = r.options[0]
    e = estimate_serving(ServingJob(model="deepseek-v3", hardware="h200", devices=o.detail["tp"], precision="fp8",
                                    **work))
    assert (o.detail["replicas"], e.replicas) == (1, 1)
    capsys.readouterr()
    assert main(["plan", "serve", "--model", "deepseek-v3", "--hardware", "h200", "--devices", "8", "--precision",
                 "fp8", "--rate", "20", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["replicas"] == 1


def test_hwlm_serve_on_a_cpu_keeps_an_fp32_kv_cache_under_bf16(tmp_path) -> None:
    """hwlm serve's packed CPU step keeps k/v in fp32 under bf16 weights (and the compressed formats); another
    engine on the same machine keeps the cache in the serving precision."""
    spec = get_model("mid").spec
    for precision in ("bf16", "w8a8"):
        sm, _ = _cpu_sm(tmp_path, precision=precision)
        assert sm.kv_tok == pytest.approx(spec.n_layers * 2 * spec.d_model * 4.0)
    sm, _ = _cpu_sm(tmp_path, engine="hf", precision="bf16")
    assert sm.kv_tok == pytest.approx(spec.n_layers * 2 * spec.d_model * 2.0)
    e = estimate_serving(ServingJob(model="mid", hardware="this-machine", calibration=str(tmp_path / "cal.json"),
                                    concurrency=1, precision="bf16", prompt_len=128, gen_len=32))
    kv = {t.name: t for t in e.terms}["kv_elem_bytes"]
    assert kv.value == 4.0 and "serve on a CPU" in kv.formula and "model_runner" in kv.source
