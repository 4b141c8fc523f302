"""Quantized linear layers and how a compressed run's model is rebuilt for loading.

``hwlm compress`` (:mod:`hwlm.compress`) turns a float model into one of these; this module holds
only the inference-time form, so that ``hwlm.train.load_model`` (an earlier stage than compress)
can rebuild a compressed run from its ``compression`` config section. In the style of gpt-fast's
``quantize.py``: each ``nn.Linear`` is swapped for a module of the same name whose ``weight`` is
the integer tensor, so a state dict keeps hwlm's key names and loads strictly from safetensors.

* :class:`Int8Linear`, ``w8a8``: per-output-channel symmetric int8 weights; activations quantized
  per token (row) at run time, symmetric int8 (:func:`quantize_rows`); ``torch._int_mm`` (int8 x int8
  -> int32, VNNI/AMX on x86, IMMA on CUDA) then one rescale by ``row scale x channel scale``. One row
  on a CPU inside a compiled graph is instead ``(W.float() * codes).sum(-1) * s * scales``, the same
  integer products summed in fp32 (exact below 2^24, see ``Int8Linear._row``): inductor fuses it into
  one reduction over both cores, where ``_int_mm`` at one row stays an extern call on one weight at a
  time (benchmarks/gemv_bandwidth.py --int8, benchmarks/compress_speed.py, docs/benchmarks.md).
* :class:`Int8Linear`, ``w8a16``: the same weights, activations in bf16,
  ``torch._weight_int8pack_mm`` (dequantizes inside the kernel). On CPU that kernel is fast in
  bf16 only (measured 53 us against 904 us in fp32 for 2304 x 768): activations are cast to bf16.
  One row on a CPU inside a compiled graph (the compiled batch-1 decode step) is instead
  ``(W.float() * x).sum(-1) * scales``, which inductor fuses into one reduction split over the
  threads, reading one byte per weight: 16.4 against 12.2 GB/s for the kernel over gpt2-124m's
  weights (benchmarks/gemv_bandwidth.py), in fp32 activations, so a little more exact, not less.
* :class:`Int4Linear`, ``w4a16``: group-wise (32 / 64 / 128 / 256) asymmetric int4, stored portably
  (two nibbles per byte, fp32 scales and zeros) and packed for the device's tinygemm kernel
  (``torch._weight_int4pack_mm_for_cpu`` or ``torch._weight_int4pack_mm`` on CUDA) on first use.
  Dequantisation: ``w = (q - 8) * scale + zero`` (the kernels' convention: ``zero`` is the value of
  the middle code 8).

``Transformer.decode_step`` (the flat batch-1 path) reads float weights directly, so a compressed
model decodes through its modules instead: :func:`apply_compression` binds :func:`module_decode_step`
on the instance. Pruned models need no module: their zeros are ordinary float weights.
"""

from __future__ import annotations

from types import MethodType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hwlm.errors import CheckpointError, ConfigError, HardwareError

__all__ = ["Int8Linear", "Int4Linear", "quantize_rows", "quantize_linear", "linear_targets", "apply_compression", "after_load",
           "dequantize", "is_quantized", "module_decode_step", "int4_kernel", "QUANT_MODES", "INT4_GROUPS"]

QUANT_MODES = ("w8a8", "w8a16", "w4a16")
INT4_GROUPS = (32, 64, 128, 256)


class Int8Linear(nn.Module):
    """``y = x W^T + b`` with W stored as int8 (out, in) and one fp32 scale per output channel."""

    def __init__(self, in_features: int, out_features: int, bias: bool, mode: str = "w8a8") -> None:
        super().__init__()
        if mode not in ("w8a8", "w8a16"):
            raise ConfigError(f"unknown int8 mode {mode!r}; choose w8a8 or w8a16")
        self.in_features, self.out_features, self.mode = in_features, out_features, mode
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._bf16: tuple[torch.Tensor, ...] | None = None  # bf16 scales/bias for w8a16, made once

    @classmethod
    def from_linear(cls, linear: nn.Linear, mode: str) -> Int8Linear:
        w = linear.weight.detach().float()
        q = cls(w.size(1), w.size(0), linear.bias is not None, mode)
        scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (out,)
        q.weight.copy_(torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8))
        q.scales.copy_(scales)
        if linear.bias is not None:
            q.bias.copy_(linear.bias.detach().float())
        return q.to(linear.weight.device)

    def dequantized(self) -> torch.Tensor:
        return self.weight.float() * self.scales[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, cpu = x.shape, x.device.type == "cpu"
        x2 = x.reshape(-1, self.in_features)  # (M, K)
        if cpu and x2.size(0) == 1 and torch.compiler.is_compiling():
            y = self._row(x2)  # the compiled batch-1 decode step
        elif self.mode == "w8a8" and (cpu or x2.size(0) > 16):
            xq, s = quantize_rows(x2)
            y = torch._int_mm(xq.to(torch.int8), self.weight.t()).float().mul_(s)  # (M, N) int32 -> fp32, row scale
            y = y.mul_(self.scales) if self.bias is None else torch.addcmul(self.bias, y, self.scales)
        elif cpu:
            y = self._int8pack(x2)
        else:  # w8a16, and w8a8 on CUDA below _int_mm's 17-row minimum (weight-only is what small batches want)
            act = x2.to(torch.bfloat16) if x2.dtype == torch.float32 else x2
            y = F.linear(act, self.weight.to(act.dtype)) * self.scales.to(act.dtype)
            y = y if self.bias is None else y + self.bias.to(act.dtype)
        return y.to(x.dtype).view(*shape[:-1], self.out_features)

    def _row(self, x2: torch.Tensor) -> torch.Tensor:
        """One row (1, K) -> (N,) as one fused reduction over the int8 weight (see the module docstring).

        w8a8 multiplies the int8 codes by the int8-rounded activations held as floats: every product is
        an exact integer (|q_w q_x| <= 127^2) and so is every partial sum below 2^24. Inductor sums in
        16 vector lanes, each over K/16 products (at most 192 x 127^2 < 2^24 at gpt2's widest K, 3072),
        so only the sum of the lanes can pass 2^24, and then it rounds by at most one part in 2^24, the
        size of the fp32 rescale that follows (tested against the integer product)."""
        w = self.weight.float()
        if self.mode == "w8a16":
            y = (w * x2.float()).sum(-1) * self.scales  # (N,)
        else:
            xq, s = quantize_rows(x2)
            y = (w * xq).sum(-1) * (s.view(1) * self.scales)
        return y if self.bias is None else y + self.bias

    def _int8pack(self, x2: torch.Tensor) -> torch.Tensor:
        """``torch._weight_int8pack_mm`` in bf16 (the CPU w8a16 kernel is fast in bf16 only)."""
        if self._bf16 is None or self._bf16[0].device != x2.device:
            self._bf16 = (self.scales.to(torch.bfloat16), None if self.bias is None else self.bias.to(torch.bfloat16))
        y = torch._weight_int8pack_mm(x2.to(torch.bfloat16), self.weight, self._bf16[0])
        return y if self.bias is None else y.add_(self._bf16[1])

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, mode={self.mode}, bias={self.bias is not None}"


def quantize_rows(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w8a8's dynamic activation quantization: (codes (M, K) as rounded floats in [-127, 127], scale (M, 1)).

    Symmetric per row (token): ``x ~ codes * s`` with ``s = max|x| / 127``. The codes are ``round(x * (127 /
    max|x|))``, a multiply rather than a divide by ``s`` (inside the compiled one-row reduction the rounding
    is recomputed for every weight element; that the multiply is cheaper there is not confirmed by
    benchmarks/gemv_bandwidth.py --int8, see docs/benchmarks.md). Eager and compiled code call this one
    function, so both round to the same codes; ``|x| * 127 / max|x| <= 127``, so no clamp is needed. Few
    ops on purpose: at batch 1 each costs microseconds of dispatch.
    """
    amax = torch.linalg.vector_norm(x2.float(), float("inf"), dim=1, keepdim=True).clamp_(min=1e-12)  # (M, 1)
    return torch.round(x2 * (127.0 / amax)), amax / 127.0


def int4_kernel(device: torch.device | str) -> str | None:
    """The name of the int4 matmul kernel torch has for ``device``, or None."""
    kind = torch.device(device).type
    if kind == "cpu" and hasattr(torch, "_weight_int4pack_mm_for_cpu"):
        return "_weight_int4pack_mm_for_cpu"
    if kind == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8:
        return "_weight_int4pack_mm"
    return None


class Int4Linear(nn.Module):
    """``y = x W^T + b`` with W in group-wise asymmetric int4: two codes per byte, a scale and zero per group."""

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int = 128) -> None:
        super().__init__()
        check_int4_shape(in_features, out_features, group_size)
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        n_groups = in_features // group_size
        self.register_buffer("weight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, n_groups))
        self.register_buffer("zeros", torch.zeros(out_features, n_groups))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._packed: tuple[torch.Tensor, ...] | None = None  # the kernel's layout, built on first use

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int) -> Int4Linear:
        w = linear.weight.detach().float()
        N, K = w.shape
        q = cls(K, N, linear.bias is not None, group_size)
        g = w.view(N, K // group_size, group_size)
        lo, hi = g.amin(dim=2), g.amax(dim=2)  # (N, G)
        scale = ((hi - lo) / 15.0).clamp_(min=1e-8)
        codes = torch.round((g - lo[..., None]) / scale[..., None]).clamp_(0, 15).to(torch.uint8).view(N, K)
        q.weight.copy_(codes[:, 0::2] | (codes[:, 1::2] << 4))  # even column in the low nibble
        q.scales.copy_(scale)
        q.zeros.copy_(lo + 8.0 * scale)  # the value of code 8 (the kernels' zero point)
        if linear.bias is not None:
            q.bias.copy_(linear.bias.detach().float())
        return q.to(linear.weight.device)

    def codes(self) -> torch.Tensor:
        """The int4 codes (out, in) as int32 in [0, 15]."""
        lo, hi = self.weight & 0x0F, self.weight >> 4
        return torch.stack((lo, hi), dim=2).view(self.out_features, self.in_features).to(torch.int32)

    def dequantized(self) -> torch.Tensor:
        G = self.group_size
        c = self.codes().float().view(self.out_features, -1, G)
        return ((c - 8.0) * self.scales[..., None] + self.zeros[..., None]).view(self.out_features, -1)

    def _pack(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        kernel = int4_kernel(device)
        if kernel is None:
            raise HardwareError(f"no int4 matmul kernel for device {device.type} in this torch: use --method int8 "
                                f"(w8a16), or export --format onnx --quantize int4 (onnxruntime MatMulNBits)")
        sz = torch.stack((self.scales.t(), self.zeros.t()), dim=2).contiguous().to(torch.bfloat16)  # (G, N, 2)
        if kernel == "_weight_int4pack_mm_for_cpu":
            packed = torch._convert_weight_to_int4pack_for_cpu(self.codes(), 1)
        else:
            c = self.codes()
            packed = torch._convert_weight_to_int4pack((c[:, 0::2] << 4 | c[:, 1::2]).to(torch.uint8), 8)
        bias = None if self.bias is None else self.bias.to(torch.bfloat16)
        return kernel, packed, sz, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None or self._packed[1].device != x.device:
            self._packed = self._pack(x.device)
        kernel, packed, sz, bias = self._packed
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()  # (a row slice is strided) the kernels are fast in bf16 (1.5 ms vs 64 us fp32)
        y = getattr(torch, kernel)(x2, packed, self.group_size, sz)
        if bias is not None:
            y = y.add_(bias)
        return y.to(x.dtype).view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, group={self.group_size}"


def check_int4_shape(in_features: int, out_features: int, group_size: int) -> None:
    """Raise ConfigError unless the kernels can hold a (out, in) weight in groups of ``group_size``."""
    if group_size not in INT4_GROUPS:
        raise ConfigError(f"int4 group size {group_size} is not supported; choose one of "
                          f"{', '.join(map(str, INT4_GROUPS))}")
    if in_features % group_size:
        raise ConfigError(f"int4 group size {group_size} does not divide the layer width {in_features}: "
                          f"choose a group size that divides it (e.g. 32)")
    if out_features % 8:
        raise ConfigError(f"int4 needs layer outputs in multiples of 8, got {out_features}: use --method int8")


def quantize_linear(linear: nn.Linear, mode: str, group_size: int = 128) -> nn.Module:
    """The quantized module for ``linear`` in ``mode`` (w8a8, w8a16 or w4a16)."""
    if mode == "w4a16":
        return Int4Linear.from_linear(linear, group_size)
    return Int8Linear.from_linear(linear, mode)


def linear_targets(model: nn.Module, include_head: bool) -> list[tuple[nn.Module, str]]:
    """(parent module, attribute) of every Linear compression swaps, in model order."""
    found = [(block.attn, n) for block in model.h for n in ("c_attn", "c_proj")]
    found += [(block.mlp, n) for block in model.h for n in ("c_fc", "c_proj")]
    if include_head:
        found.append((model, "lm_head"))
    return found


def apply_compression(model: nn.Module, section: dict[str, Any]) -> nn.Module:
    """Rebuild ``model`` (a fresh Transformer) in the stored form a ``compression`` section describes.

    Quantized layers are swapped for empty modules of the right shapes, so that ``model.safetensors``
    then loads strictly. Called by ``hwlm.train.load_model`` before the weights are read.
    """
    mode = section.get("precision", "fp32")
    if mode in ("fp32", None):
        return model
    if mode not in QUANT_MODES:
        raise CheckpointError(f"run config names compression precision {mode!r}; this hwlm knows "
                              f"{', '.join(QUANT_MODES)}: use a newer hwlm or the original run")
    group = int(section.get("group_size", 128))
    for parent, name in linear_targets(model, bool(section.get("quantize_head", True))):
        lin = getattr(parent, name)
        bias = lin.bias is not None
        if mode == "w4a16":
            new: nn.Module = Int4Linear(lin.in_features, lin.out_features, bias, group)
        else:
            new = Int8Linear(lin.in_features, lin.out_features, bias, mode)
        setattr(parent, name, new)
    use_module_decode(model)
    return model


class SemiSparseLinear(nn.Linear):
    """An ``nn.Linear`` whose weight is a 2:4 ``SparseSemiStructuredTensor``: its kernels take 2-D
    contiguous input (a (B, T, C) input fails with ``expand`` unsupported once B > 1, seen on an H200)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = F.linear(x.reshape(-1, self.in_features).contiguous(), self.weight, self.bias)
        return y.view(*shape[:-1], self.out_features)


def _sparse_pays(weight: torch.Tensor, rows: int = 1, calls: int = 20) -> tuple[bool, float, float]:
    """Whether 2:4 ``F.linear`` on ``weight`` beats dense at ``rows`` rows here: (pays, dense us, sparse us).

    Measured, not assumed: on an H200 with torch 2.11 cuSPARSELt took 500-700 us per call at every row
    count against 22-50 us dense, and CUTLASS's 2:4 kernels run on compute capability 8.x only."""
    import time

    from torch.sparse import to_sparse_semi_structured

    x = torch.randn(rows, weight.size(1), device=weight.device, dtype=weight.dtype)
    ws = to_sparse_semi_structured(weight.detach())
    us = []
    for w in (weight.detach(), ws):
        F.linear(x, w)
        torch.cuda.synchronize(weight.device)
        t0 = time.perf_counter()
        for _ in range(calls):
            F.linear(x, w)
        torch.cuda.synchronize(weight.device)
        us.append(1e6 * (time.perf_counter() - t0) / calls)
    return us[1] < us[0], us[0], us[1]


def after_load(model: nn.Module, section: dict[str, Any]) -> nn.Module:
    """What needs the weights and the device: 2:4 sparse kernels for pruned 2:4 models on CUDA, where
    they measure faster than the dense product of the same (masked) weights at one row, else dense
    (``model.sparse_kernels`` says which and why)."""
    if section.get("pattern") == "2:4" and next(model.parameters()).device.type == "cuda":
        from torch.sparse import to_sparse_semi_structured

        targets = [(p, n) for p, n in linear_targets(model, False)
                   if isinstance(getattr(p, n), nn.Linear) and getattr(p, n).weight.dtype in (torch.float16,
                                                                                             torch.bfloat16)]
        if not targets:
            return model
        if section.get("sparse_kernels") == "always":  # an A/B measurement (benchmarks/gpu_compress.py)
            pays = True
            model.sparse_kernels = "2:4: asked for"
        else:
            try:
                pays, dense, sparse = _sparse_pays(getattr(*targets[0]).weight)
            except (RuntimeError, NotImplementedError) as exc:  # no 2:4 kernel for this device or dtype
                model.sparse_kernels = f"dense: no 2:4 kernel here ({str(exc).splitlines()[0][:120]})"
                return model
            model.sparse_kernels = (f"{'2:4' if pays else 'dense'}: 2:4 {sparse:.1f} us vs dense {dense:.1f} "
                                    f"us per one-row product, measured on loading")
        if not pays:
            return model
        for parent, name in targets:
            lin = getattr(parent, name)
            lin.weight = nn.Parameter(to_sparse_semi_structured(lin.weight.detach()), requires_grad=False)
            lin.__class__ = SemiSparseLinear  # the same module and parameters, a 2-D forward
    return model


def use_module_decode(model: nn.Module) -> None:
    """Make ``model`` decode single tokens through its modules (see the module docstring)."""
    model.decode_step = MethodType(module_decode_step, model)
    model.decode_state = lambda: None


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, (Int8Linear, Int4Linear)) for m in model.modules())


def dequantize(model: nn.Module) -> nn.Module:
    """A float copy of ``model`` (``model`` itself when it holds no quantized layer)."""
    if not is_quantized(model):
        return model
    from hwlm.model.transformer import Transformer

    out = Transformer(model.cfg)
    sd = {}
    for name, module in model.named_modules():
        if isinstance(module, (Int8Linear, Int4Linear)):
            sd[f"{name}.weight"] = module.dequantized()
            if module.bias is not None:
                sd[f"{name}.bias"] = module.bias.float()
    for key, value in model.state_dict().items():
        owner = key.rsplit(".", 1)[0]
        if not isinstance(model.get_submodule(owner), (Int8Linear, Int4Linear)):
            sd[key] = value
    if model.cfg.tie_embeddings:
        # Quantizing untied the head from the embedding; the float model ties it again to the embedding,
        # which holds the original float weights.
        sd.pop("lm_head.weight", None)
        sd.pop("lm_head.scales", None)
    out.load_state_dict(sd, strict=not model.cfg.tie_embeddings)
    return out.to(next(model.parameters()).device).eval()


def module_decode_step(self: nn.Module, token: int | torch.Tensor, cache: Any, pos: int,
                       state: Any = None) -> torch.Tensor:
    """Logits (V,) of one token at ``pos`` of a batch-1 cache, through the (quantized) modules."""
    device = self.wte.weight.device
    idx = token.view(1, 1) if isinstance(token, torch.Tensor) else torch.tensor([[token]], device=device)
    x = self.wte(idx)  # (1, 1, C)
    rope = None
    if self.wpe is not None:
        x = x + self.wpe.weight[pos:pos + 1]
    else:
        rope = (self.rope_cos[pos:pos + 1], self.rope_sin[pos:pos + 1])
    for block in self.h:
        x = block(x, rope, cache, pos)
    return self.lm_head(self.ln_f(x)).view(-1)
