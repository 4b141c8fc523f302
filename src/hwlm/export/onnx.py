"""Export an hwlm model to ONNX with its KV cache as plain tensors, and run it with ONNX Runtime.

``export_onnx(model, out)`` traces :func:`hwlm.model.functional.forward_past` with torch's dynamo
exporter (``torch.onnx.export(..., dynamo=True)``) into ``OUT/model.onnx``, with the names Hugging
Face Optimum uses for decoder models, so tools written for Optimum's exports read it:

* inputs ``input_ids`` (batch_size, sequence_length) int64 and, per layer i,
  ``past_key_values.{i}.key`` / ``.value`` (batch_size, K, past_sequence_length, D) float32;
* outputs ``logits`` (batch_size, sequence_length, V) and ``present.{i}.key`` / ``.value``
  (batch_size, K, past_sequence_length + sequence_length, D).

Positions follow from the past length (no ``position_ids`` input) and every row has the same
length (no ``attention_mask`` input): what batch decoding of equal-length prompts needs. The first
call passes a zero-length past. ``quantize="int8"`` rewrites the MatMuls with
``onnxruntime.quantization.quantize_dynamic`` (int8 weights, int8 dynamic activations);
``"int4"`` with ``MatMulNBitsQuantizer`` (block-wise int4 weights, the ``MatMulNBits`` kernel).

The file carries its origin in ONNX metadata (``hwlm.model_config``, ``hwlm.weights_sha256``,
``hwlm.quantize``), so running it against a run it was not exported from fails with one line
(:meth:`OnnxModel.check_matches`). fp32 logits equal hwlm's within 1e-4 (tested).

    >>> export_onnx(model, "runs/onnx", tokenizer_json="runs/train/ckpt/tokenizer.json")
    >>> onnx_model = OnnxModel.load("runs/onnx")
    >>> ids = list(onnx_model.generate([1, 2, 3], max_new_tokens=8, temperature=0))
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from hwlm.config import from_dict, to_dict
from hwlm.errors import CheckpointError, ConfigError, HwlmError
from hwlm.io import atomic_dir, atomic_write_json
from hwlm.model.config import ModelConfig
from hwlm.model.functional import forward_past
from hwlm.model.generation import check_args, decode_loop, sample_next
from hwlm.model.transformer import Transformer

__all__ = ["export_onnx", "OnnxModel", "weights_fingerprint", "QUANTIZE", "ONNX_FILE"]

QUANTIZE = ("int8", "int4")
ONNX_FILE = "model.onnx"
SPIN = ("always", "run", "never")  # OnnxModel.load's spin modes
INT4_BLOCK = 32  # int4 group size: 32 keeps the quantization error of a small model's rows low


def _need_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise ConfigError("ONNX export and inference need onnx, onnxscript and onnxruntime: "
                          "pip install 'hwlm[onnx]'") from None


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over the parameters' names, shapes and float32 bytes: which weights an ONNX file came from."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        t = p.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _names(n_layer: int) -> tuple[list[str], list[str]]:
    kv = [(i, w) for i in range(n_layer) for w in ("key", "value")]
    return (["input_ids"] + [f"past_key_values.{i}.{w}" for i, w in kv],
            ["logits"] + [f"present.{i}.{w}" for i, w in kv])


class _PastIO(nn.Module):
    """``forward_past`` with the past flattened into positional tensors (k0, v0, k1, v1, ...): what the exporter traces."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)]
        logits, present = forward_past(self.model, input_ids, pairs)
        return (logits, *[t for kv in present for t in kv])


def _trace(model: Transformer) -> Any:
    """The ONNXProgram of ``model`` with dynamic batch, sequence and past lengths."""
    cfg = model.cfg
    # Example sizes above 1 everywhere: torch.export specializes dimensions of size 0 and 1.
    B, T, P = 2, 3, 4
    ids = torch.zeros(B, T, dtype=torch.long)
    past = [torch.zeros(B, cfg.n_kv_head, P, cfg.head_dim) for _ in range(2 * cfg.n_layer)]
    batch, seq = torch.export.Dim("batch_size"), torch.export.Dim("sequence_length")
    past_len = torch.export.Dim("past_sequence_length")
    shapes = {"input_ids": {0: batch, 1: seq}, "past": tuple({0: batch, 2: past_len} for _ in past)}
    inputs, outputs = _names(cfg.n_layer)
    log = logging.getLogger("torch.onnx")
    level = log.level
    # The exporter logs its optional torchvision ops and axis renaming on every call: not the user's business.
    log.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.onnx.export(_PastIO(model).eval(), (ids, *past), dynamo=True, input_names=inputs,
                                     output_names=outputs, dynamic_shapes=shapes, optimize=True, verbose=False)
    finally:
        log.setLevel(level)


def _quantize(src: Path, dst: Path, how: str) -> None:
    # onnxruntime's quantizers log advice (pre-processing, unquantized nodes) to the root logger.
    logging.disable(logging.WARNING)
    try:
        _quantize_quietly(src, dst, how)
    finally:
        logging.disable(logging.NOTSET)


def _quantize_quietly(src: Path, dst: Path, how: str) -> None:
    import onnx

    if how == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # Per-channel int8 weights keep a small model's rows apart; activations are quantized per call.
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"])
        return
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(onnx.load(str(src)), bits=4, block_size=INT4_BLOCK, is_symmetric=True,
                             accuracy_level=4)  # accuracy_level 4: int8 activations in the kernel (fastest on CPU)
    q.process()
    q.model.save_model_to_file(str(dst), use_external_data_format=False)


def _set_metadata(path: Path, meta: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(path))


def export_onnx(model: Transformer, out_dir: str | os.PathLike, tokenizer_json: str | os.PathLike | None = None,
                quantize: str | None = None, source: dict[str, Any] | None = None) -> Path:
    """Write ``OUT/model.onnx`` (and the tokenizer, and ``onnx_export.json``) atomically; return the folder."""
    if quantize not in (None, *QUANTIZE):
        raise ConfigError(f"unknown ONNX quantization {quantize!r}; choose {', '.join(QUANTIZE)} or none")
    _need_onnx()
    model = model.to("cpu").float().eval()
    meta = {"hwlm.model_config": json.dumps(to_dict(model.cfg), sort_keys=True),
            "hwlm.weights_sha256": weights_fingerprint(model), "hwlm.quantize": quantize or "none"}
    out = Path(out_dir)
    with atomic_dir(out, what="hwlm export") as tmp:
        plain = tmp / ("fp32.onnx" if quantize else ONNX_FILE)
        _trace(model).save(str(plain))
        if quantize:
            _quantize(plain, tmp / ONNX_FILE, quantize)
            plain.unlink()
            for extra in tmp.glob("fp32.onnx*"):
                extra.unlink()
        _set_metadata(tmp / ONNX_FILE, meta)
        if tokenizer_json is not None:
            shutil.copyfile(tokenizer_json, tmp / "tokenizer.json")
        atomic_write_json(tmp / "onnx_export.json", {
            "format_version": 1, "file": ONNX_FILE, "quantize": quantize or "none",
            "bytes": (tmp / ONNX_FILE).stat().st_size, "weights_sha256": meta["hwlm.weights_sha256"],
            "model": to_dict(model.cfg), "source": source or {}})
    return out


class OnnxModel:
    """An exported model under ONNX Runtime: ``run(ids, past)``, and ``generate`` as ``hwlm.model.generate``."""

    def __init__(self, session: Any, path: Path, meta: dict[str, str]) -> None:
        self.session, self.path = session, path
        try:
            self.cfg = from_dict(ModelConfig, json.loads(meta["hwlm.model_config"]), where=str(path))
            self.fingerprint = meta["hwlm.weights_sha256"]
        except (KeyError, ValueError, HwlmError):
            raise CheckpointError(f"{path} was not exported by `hwlm export --format onnx` (no hwlm metadata); "
                                  "export the run again") from None
        self.quantize = meta.get("hwlm.quantize", "none")
        self.input_names, self.output_names = _names(self.cfg.n_layer)

    @classmethod
    def load(cls, path: str | os.PathLike, threads: int | None = None, spin: str = "always") -> OnnxModel:
        """Open ``path`` (an export folder or a ``.onnx`` file) with ``threads`` intra-op threads (default: torch's).

        ``spin`` says when the intra-op threads spin-wait for work instead of sleeping: ``always``
        (onnxruntime's default: inside a call and for a while after it, ready for the next one), ``run``
        (inside a call only: they sleep as soon as it returns, for a process that runs torch between ONNX
        calls on the same cores) or ``never`` (every op wakes them)."""
        _need_onnx()
        import onnxruntime as ort

        p = Path(path)
        file = p / ONNX_FILE if p.is_dir() else p
        if not file.is_file():
            raise CheckpointError(f"{file} does not exist: give a folder made by `hwlm export --format onnx` "
                                  "or its model.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        if spin not in SPIN:
            raise ConfigError(f"unknown onnxruntime spin mode {spin!r}; choose {', '.join(SPIN)}")
        if spin == "run":
            opts.add_session_config_entry("session.force_spinning_stop", "1")
        elif spin == "never":
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(str(file), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise CheckpointError(f"{file} is not a readable ONNX model ({str(exc).splitlines()[0][:200]})") from None
        return cls(session, file, session.get_modelmeta().custom_metadata_map)

    def check_matches(self, cfg: ModelConfig, fingerprint: str | None = None, what: str = "the run") -> None:
        """Raise CheckpointError unless this file was exported from a model with ``cfg`` (and these weights)."""
        if to_dict(cfg) != to_dict(self.cfg):
            raise CheckpointError(f"{self.path} was exported from another model ({self.cfg.n_layer} layers, width "
                                  f"{self.cfg.n_embd}, vocab {self.cfg.vocab_size}) than {what} ({cfg.n_layer} layers,"
                                  f" width {cfg.n_embd}, vocab {cfg.vocab_size}): export {what} again")
        if fingerprint is not None and fingerprint != self.fingerprint:
            raise CheckpointError(f"{self.path} holds other weights than {what} (another checkpoint of the same shape):"
                                  f" export {what} again")

    def empty_past(self, batch_size: int) -> list[np.ndarray]:
        shape = (batch_size, self.cfg.n_kv_head, 0, self.cfg.head_dim)
        return [np.zeros(shape, dtype=np.float32) for _ in range(2 * self.cfg.n_layer)]

    def run(self, ids: np.ndarray, past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits (B, T, V) for ``ids`` (B, T) after ``past`` (k0, v0, k1, ...), and the present in the same order."""
        feed = dict(zip(self.input_names, [np.ascontiguousarray(ids, dtype=np.int64), *past]))
        out = self.session.run(self.output_names, feed)
        return out[0], out[1:]

    def timed_decode(self, prompt: np.ndarray, new_tokens: int) -> tuple[float, list[float]]:
        """Seconds of the prefill of ``prompt`` (B, P) and of each of ``new_tokens - 1`` greedy steps after it."""
        import time

        t0 = time.perf_counter()
        logits, past = self.run(prompt, self.empty_past(prompt.shape[0]))
        nxt = logits[:, -1].argmax(-1)[:, None]  # (B, 1)
        first, steps = time.perf_counter() - t0, []
        for _ in range(new_tokens - 1):
            t0 = time.perf_counter()
            logits, past = self.run(nxt, past)
            nxt = logits[:, -1].argmax(-1)[:, None]
            steps.append(time.perf_counter() - t0)
        return first, steps

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 eos_id: int | None = None) -> Iterator[int]:
        """New token ids as ``hwlm.model.generate`` yields them (same sampling, same sliding window)."""
        cfg = self.cfg
        check_args(prompt_ids, max_new_tokens, temperature, top_k, top_p, cfg.vocab_size)
        if max_new_tokens == 0:
            return
        generator = torch.Generator().manual_seed(seed) if seed is not None and temperature > 0 else None
        history = [int(t) for t in prompt_ids][-cfg.block_size:]
        yield from decode_loop(_OnnxSteps(self), history, max_new_tokens, max(1, cfg.block_size // 2),
                               lambda logits: sample_next(logits, temperature, top_k, top_p, generator), eos_id)


class _OnnxSteps:
    """``hwlm.model.generation.Steps`` over an ONNX session: the past comes back as the present each call."""

    def __init__(self, model: OnnxModel) -> None:
        self.model, self.max_len = model, model.cfg.block_size
        self.past: list[np.ndarray] = []

    def prefill(self, ids: list[int]) -> torch.Tensor:
        logits, self.past = self.model.run(np.array([ids]), self.model.empty_past(1))
        return torch.from_numpy(logits[0, -1])

    def step(self, token: int, pos: int) -> torch.Tensor:
        logits, self.past = self.model.run(np.array([[token]]), self.past)
        return torch.from_numpy(logits[0, -1])
