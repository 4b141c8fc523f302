"""The software stack as an input: training frameworks and serving engines, with their priors.

The same chip runs a model at different speeds under different stacks. What differs, and how the
planner models it (each a multiplier on a fitted prior, 1.0 = as fitted, or a switch):

* **kernel fusion** (``elementwise``): the element-wise traffic term (norms, activations, residuals,
  softmax statistics) shrinks when the stack fuses those passes into neighbouring kernels
  (Megatron's fused kernels, torch.compile/Inductor, XLA, TensorRT);
* **attention kernel** (``attention``): FlashAttention-2 reaches 50-73% of A100 peak in the forward
  pass against 25-40% for FlashAttention-1 (Dao 2023, arXiv:2307.08691, section 4.1); FlashAttention-3
  ~75% of H100 (Shah et al. 2024, arXiv:2407.08608, section 4.1): a multiplier on the attention
  FLOPs' share of the matmul efficiency;
* **communication overlap** (``tp_overlap``): the share of tensor-parallel traffic hidden behind
  compute (NeMo/Megatron-Core ``tp_comm_overlap`` user buffers; XLA collective matmul);
* **CUDA graphs** (serving, ``cuda_graphs``): one replay issues a whole decode step, so a GPU does not
  wait for the host (vLLM, TensorRT-LLM, gpt-fast); eager stacks (HF ``generate``, hwlm's loop) pay
  each op's host cost;
* **grouped-query decode** (serving, ``kv_per_query_head``): a decode-attention kernel that runs one
  thread block per (query head, sequence) reads its KV head's cache once for every query head of the group,
  so grouped-query attention saves KV memory but not KV traffic. TensorRT-LLM's masked multi-head attention
  kernel launches ``grid{num_heads, batch_size}`` (``mmha_launch_kernel_ex``,
  cpp/tensorrt_llm/kernels/decoderMaskedMultiheadAttention); its XQA kernel, which shares the KV reads of a
  group ("reducing data loading"), arrived in v0.8 (TensorRT-LLM docs/source/blogs/XQA-kernel.md). vLLM's
  FlashAttention backend folds a group's query heads into one block for decode (FlashAttention-2
  ``mha_fwd_kvcache``, seqlen_q = 1 with GQA), so it reads each KV head once;
* **logits at the last prompt token only** (serving, ``last_token_logits``): an engine that samples only after
  the prompt's last token need not run the output layer on the others. vLLM prunes the hidden states to the
  sampled positions before its ``LogitsProcessor`` (``selected_token_indices``), TensorRT-LLM gathers the last
  token's state by default (``gather_context_logits: bool = False`` in its ``prepare_inputs``), and
  optimum-habana's ``--trim_logits`` ("Calculate logits only for the last token", run_generation.py) does the
  same on Gaudi, as do hwlm's engine (``ModelRunner.step``: the output layer on each row's last token) and
  ``hwlm bench infer`` (``last_only=True``); Hugging Face ``generate`` computes them for every position (llama.cpp
  is left out: not checked here). For a 128K vocabulary that is 6.5% of
  Llama 3.1 8B's prefill FLOPs (:func:`hwlm.formulas.lm_head_flops_per_token`);
* **the engine's own host work** (serving, ``step_host_s`` + ``row_host_s`` a row): scheduling, sampling
  and sending events between two forwards. An engine that overlaps it with the device (vLLM's async
  scheduling, CUDA graphs queued ahead) hides it and keeps 0; hwlm's synchronous loop adds it to every step;
* **where it runs** (``vendors``/``kinds``): TensorRT-LLM is NVIDIA-only, MaxText is JAX (TPU, GPU);
* **activation memory** (training, ``activations``): which count of saved activations applies.
  ``"korthikanti"`` (:func:`hwlm.formulas.korthikanti_activation_bytes_per_layer`): stacks that hold 16-bit
  weights and run their matmuls on them (no per-matmul autocast weight copies) with a FlashAttention-style
  kernel (no s² probabilities kept): Megatron-LM/Core and NeMo (``--bf16``), DeepSpeed's bf16/fp16 engine
  (the model itself is cast to 16 bits), FSDP/FSDP2 with ``param_dtype=bf16`` (torchtitan's and LLM
  Foundry's mixed-precision policy: the gathered weights are already 16-bit, so autocast copies nothing),
  MaxText (its weights stay fp32, ``weight_dtype: float32``, but activations are ``dtype: bfloat16`` and
  what the backward keeps is what its remat policy names; that XLA keeps no per-matmul bf16 weight copy
  across the step is assumed, not measured). ``"hwlm"`` (:func:`hwlm.formulas.saved_activation_bytes_per_layer`): hwlm's own loop,
  fp32 weights under ``torch.autocast`` with an fp32 residual stream and a 16-bit weight copy per matmul,
  counted from its model and tested against autograd's saved tensors.

The multipliers are priors with the mechanism sourced; their sizes are assumptions where no
independent measurement is cited (``assumed`` in the source). None of them comes from a publication
that supplies a held-out validation row.
"""

from __future__ import annotations

from dataclasses import dataclass

from hwlm.errors import PlanError
from hwlm.plan.catalog import Device

__all__ = ["Stack", "FRAMEWORKS", "ENGINES", "get_framework", "get_engine", "default_framework", "default_engine"]


@dataclass(frozen=True)
class Stack:
    """One training framework or serving engine and what it changes."""

    id: str
    name: str
    vendors: tuple[str, ...]          # hardware vendors it runs on ("*": any)
    kinds: tuple[str, ...]            # hardware kinds it runs on
    elementwise: float = 1.0          # x the element-wise traffic prior (fusion < 1)
    attention: float = 1.0            # x matmul efficiency for the attention-score FLOPs
    tp_overlap: float = 0.0           # share of tensor-parallel traffic hidden behind compute
    cuda_graphs: bool = False         # serving: decode steps replayed as CUDA graphs
    max_batch: int = 256              # serving: default cap on running sequences
    chunk_tokens: int = 2048          # serving: prefill tokens per engine step (chunked prefill)
    fused_prefill: bool = True        # serving: a step's prefill chunks run in the decode forward (else apart)
    budget_counts_decode: bool = True  # serving: decode rows take chunk_tokens too (vLLM); else prompts only
    padded_attention: bool = False    # serving: a packed step's attention pads every row to the longest row
    activations: str = "korthikanti"  # training: the saved-activation count (hwlm.formulas.ACTIVATION_COUNTS)
    kv_per_query_head: bool = False   # serving: decode attention reads each KV head once per query head (no GQA reuse)
    last_token_logits: bool = False   # serving: prefill computes the output layer for the last prompt token only
    step_host_s: float = 0.0          # serving: the engine's own work per step outside the forward, in series with it
    row_host_s: float = 0.0           # ... and per row of the step (scheduling, sampling, events)
    source: str = ""

    def runs_on(self, dev: Device) -> bool:
        return (self.vendors == ("*",) or dev.vendor in self.vendors or dev.vendor == "local") \
            and dev.kind in self.kinds


_FA2 = "FlashAttention-2, Dao 2023, arXiv:2307.08691"
_ALL_KINDS = ("gpu", "tpu", "accelerator", "cpu", "asic", "fpga")

FRAMEWORKS: dict[str, Stack] = {s.id: s for s in (
    Stack("megatron", "Megatron-LM / Megatron-Core", ("nvidia", "amd"), ("gpu",), elementwise=1.0,
          source="the reference (1.0): the priors were fitted mostly on Megatron and FSDP runs; fused bias-GeLU, "
          "bias-dropout-add and softmax kernels, Narayanan et al. 2021, arXiv:2104.04473, section 4.2; " + _FA2),
    Stack("nemo", "NVIDIA NeMo (Megatron-Core + Transformer Engine)", ("nvidia",), ("gpu",), elementwise=0.85,
          tp_overlap=0.5, source="Megatron-Core fusions + Transformer Engine fused LayerNorm-Linear; "
          "tp_comm_overlap user buffers (NeMo performance docs; half the TP traffic hidden assumed)"),
    Stack("deepspeed", "DeepSpeed (ZeRO) on Hugging Face models", ("nvidia", "amd", "intel"), ("gpu", "accelerator"),
          elementwise=1.1, source="unfused Hugging Face modelling code under ZeRO, Rajbhandari et al. "
          "2019, arXiv:1910.02054 (10% more element-wise traffic than the reference assumed)"),
    Stack("fsdp", "PyTorch FSDP (eager)", ("nvidia", "amd", "intel"), ("gpu", "accelerator", "cpu"),
          elementwise=1.0, source="eager PyTorch with SDPA (FlashAttention-2 backend); Zhao et al. "
          "2023, arXiv:2304.11277 (all-gather prefetch overlaps compute); part of the fit set (1.0)"),
    Stack("torchtitan", "torchtitan (FSDP2 + torch.compile)", ("nvidia", "amd"), ("gpu",), elementwise=0.85,
          tp_overlap=0.3, source="torch.compile fuses element-wise ops; async TP (Liang et al. 2024, "
          "arXiv:2410.06511, section 3); sizes assumed"),
    Stack("maxtext", "MaxText (JAX/XLA)", ("google", "nvidia", "amd"), ("tpu", "gpu"), elementwise=0.6,
          source="XLA fuses element-wise ops (norms, activations, residual adds) into the neighbouring matrix "
          "products' prologues and epilogues (Google Cloud TPU performance guide, 'XLA compiler optimizations', "
          "fusion), the mechanism TensorRT-LLM's fused epilogues have, so the same assumed size (0.6 of the "
          "reference stack's element-wise traffic; the TPU priors are the GPU fit's, from eager and "
          "Megatron-fused runs, not XLA-compiled ones). Collective matmul (Wang et al., ASPLOS 2023, 'Overlap "
          "communication with dependent computation via decomposition') can hide TP traffic, but it is a "
          "per-model option with no published size here, so it is not assumed"),
    Stack("llm-foundry", "MosaicML LLM Foundry (Composer + FSDP)", ("nvidia", "amd"), ("gpu",), elementwise=0.9,
          source="FSDP with FlashAttention-2 and fused LayerNorm/cross-entropy kernels (llm-foundry "
          "model code); 10% less traffic than the reference assumed"),
    Stack("hwlm", "hwlm's own loop (eager, torch.autocast)", ("*",), _ALL_KINDS, activations="hwlm",
          source="hwlm.train: eager PyTorch with SDPA; the priors as fitted; activation memory counted from "
          "hwlm's model (fp32 residual stream, autocast weight copies)"),
)}

ENGINES: dict[str, Stack] = {s.id: s for s in (
    Stack("vllm", "vLLM", ("nvidia", "amd", "google", "intel", "aws", "local"), ("gpu", "tpu", "accelerator", "cpu"),
          elementwise=0.9, attention=1.0, cuda_graphs=True, max_batch=256, chunk_tokens=8192, last_token_logits=True,
          source="vLLM: CUDA graphs for decode, chunked prefill (EngineArgs defaults for the OpenAI server: "
          "max_num_seqs 256, max_num_batched_tokens 8192), FlashAttention-2/FlashInfer, PagedAttention "
          "(Kwon et al. 2023, arXiv:2309.06180)"),
    Stack("tensorrt-llm", "TensorRT-LLM", ("nvidia",), ("gpu",), elementwise=0.6, attention=1.15, cuda_graphs=True,
          max_batch=256, chunk_tokens=8192, last_token_logits=True, source="TensorRT-LLM: fused multi-head attention kernels and fused "
          "epilogues, in-flight batching (performance-tuning guide); sizes assumed"),
    Stack("tensorrt-llm-0.7", "TensorRT-LLM 0.5-0.7 (before the XQA kernel)", ("nvidia",), ("gpu",),
          elementwise=0.6, attention=1.15, cuda_graphs=True, max_batch=256, chunk_tokens=8192,
          kv_per_query_head=True, last_token_logits=True, source="TensorRT-LLM as above, but decode attention in the masked multi-head "
          "attention kernel (one block per query head and sequence: grid{num_heads, batch_size}, "
          "decoderMaskedMultiheadAttention), so grouped-query models read their KV cache once per query head; "
          "XQA, which shares those reads, came in v0.8 (docs/source/blogs/XQA-kernel.md)"),
    Stack("gpt-fast", "gpt-fast (torch.compile, CUDA graphs)", ("nvidia", "amd"), ("gpu",), elementwise=0.8,
          cuda_graphs=True, max_batch=1, chunk_tokens=8192,
          source="pytorch-labs/gpt-fast: compile(mode='reduce-overhead') captures decode in CUDA graphs; batch 1"),
    Stack("llama.cpp", "llama.cpp / ggml", ("*",), ("cpu", "gpu"), elementwise=1.0, cuda_graphs=True, max_batch=16,
          chunk_tokens=512, source="ggml graphs run without per-op Python; Metal command buffers / CUDA graphs; "
          "default n_batch 512 (llama.cpp common args)"),
    Stack("optimum-habana", "Optimum Habana text generation (HPU graphs, static batch)", ("intel",), ("accelerator",),
          elementwise=0.9, cuda_graphs=True, max_batch=4096, chunk_tokens=1 << 30, last_token_logits=True,
          source="optimum-habana examples/text-generation/run_generation.py as Intel's Gaudi performance pages run it "
          "(HabanaAI/Gaudi-tutorials PyTorch/Hugging_Face_pipelines/Benchmarking_on_Optimum-habana_with_fp8/"
          "Gaudi_1-19.json: --use_hpu_graphs --trim_logits --bucket_size=128 --bucket_internal --use_flash_attention, "
          "fp8 through maxabs_quant.json): each step replayed as an HPU graph, the whole static batch's prompts in "
          "one forward, logits at the last prompt token only; fused RMSNorm, RoPE and scaled-dot-product attention "
          "kernels (optimum/habana/transformers/models/llama/modeling_llama.py: FusedRMSNorm, FusedRoPE, FusedSDPA), "
          "their saving assumed the size of vLLM's fused kernels (0.9)"),
    Stack("hf", "Hugging Face transformers generate (eager)", ("*",), _ALL_KINDS, elementwise=1.2, max_batch=32,
          chunk_tokens=1 << 30, source="eager PyTorch modules, static batch (no continuous batching); 20% more "
          "element-wise traffic than fused assumed"),
    Stack("hwlm", "hwlm's own engine (eager; `hwlm serve`)", ("*",), _ALL_KINDS, max_batch=32, chunk_tokens=512,
          budget_counts_decode=False, padded_attention=True, last_token_logits=True, step_host_s=2.6e-4,
          row_host_s=4e-5,
          source="hwlm.serve.engine (EngineConfig: max_num_seqs 32, prefill_budget 512 prompt tokens per step; "
          "ModelRunner.step packs the prompt chunks and decode rows into one forward, pads attention to (rows, "
          "heads, most queries, longest context) with a mask and runs the output layer on each row's last "
          "token), eager as `hwlm bench infer` measures; the priors as fitted. Its loop is synchronous: after each "
          "forward it reads the tokens back, samples and sends each row's event in Python, 0.26 ms + 0.04 ms a row "
          "(fitted to benchmarks/plan_serve_check.py's 'rest of the engine step' p50 on the 2-core AMD EPYC, "
          "docs/benchmarks.md, session 10, its first run: 0.30 ms at 1 row, 0.46 at 2-4, 0.64 at 5-8, 0.75 at "
          "9-16, 1.21 at 17-32; one host, measured, not a prior of other CPUs)"),
)}


def _get(table: dict[str, Stack], what: str, name: str, dev: Device, alt: str) -> Stack:
    key = name.strip().lower().replace("_", "-")
    key = {"trt-llm": "tensorrt-llm", "trtllm": "tensorrt-llm", "tensorrt-llm-0.5": "tensorrt-llm-0.7",
           "tensorrt-llm-0.6": "tensorrt-llm-0.7", "llamacpp": "llama.cpp", "transformers": "hf",
           "megatron-lm": "megatron", "foundry": "llm-foundry", "optimum": "optimum-habana",
           "habana": "optimum-habana"}.get(key, key)
    if key not in table:
        raise PlanError(f"unknown {what} {name!r}; choose one of {', '.join(table)}")
    s = table[key]
    if not s.runs_on(dev):
        ok = [x.id for x in table.values() if x.runs_on(dev)]
        raise PlanError(f"{s.name} does not run on {dev.id} ({dev.vendor} {dev.kind}); for it use "
                        f"{' or '.join(ok) or 'none of the known ' + what + 's'} (--{alt})")
    return s


def get_framework(name: str, dev: Device) -> Stack:
    """A training framework that runs on ``dev``; PlanError naming those that do."""
    return _get(FRAMEWORKS, "framework", name, dev, "framework")


def get_engine(name: str, dev: Device) -> Stack:
    """A serving engine that runs on ``dev``; PlanError naming those that do."""
    return _get(ENGINES, "engine", name, dev, "engine")


def default_framework(dev: Device) -> Stack:
    """The usual stack for the hardware: MaxText on TPUs, Megatron on NVIDIA/AMD GPUs, else hwlm's own
    (also on this machine, whose calibration measured hwlm's own loop)."""
    if dev.vendor == "local":
        return FRAMEWORKS["hwlm"]
    for sid in ("maxtext",) if dev.kind == "tpu" else ("megatron",) if dev.kind == "gpu" else ():
        if FRAMEWORKS[sid].runs_on(dev):
            return FRAMEWORKS[sid]
    return FRAMEWORKS["hwlm"]


def default_engine(dev: Device, serving: bool = False) -> Stack:
    """``plan infer`` and this machine: hwlm's own eager loop (what `hwlm bench infer` and `hwlm serve`
    run). ``plan serve`` on catalog hardware: vLLM where it runs, llama.cpp on Apple, else hwlm."""
    if not serving or dev.vendor == "local":  # this machine: what `hwlm bench infer` / `hwlm serve` run
        return ENGINES["hwlm"]
    if dev.vendor == "apple":
        return ENGINES["llama.cpp"]
    for sid in ("vllm", "llama.cpp"):
        if ENGINES[sid].runs_on(dev):
            return ENGINES[sid]
    return ENGINES["hwlm"]
