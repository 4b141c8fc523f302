"""Load a trained model for evaluation, generation and export: ``load_model(run_or_ckpt, device)``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from hwlm.config import from_dict
from hwlm.errors import CheckpointError, HwlmError
from hwlm.model import ModelConfig
from hwlm.train import checkpoint as ckpt_io

__all__ = ["LoadedModel", "load_model", "stream_text", "decode_stream"]

# A UTF-8 character is at most 4 bytes, so a byte-level token run this long that still does not
# decode cleanly is not an unfinished character but invalid bytes: print it as it is.
_MAX_PENDING_TOKENS = 8


@dataclass
class LoadedModel:
    """A model in eval mode with its config, tokenizer and where it came from."""

    model: Any              # hwlm.model.Transformer
    model_cfg: ModelConfig
    tokenizer: Any          # tokenizers.Tokenizer
    step: int
    path: Path              # the checkpoint folder
    eot_id: int | None = None
    run_config: dict[str, Any] | None = None


def load_model(run_or_checkpoint_dir: str | Path, device: str = "cpu", key: bytes | None = None) -> LoadedModel:
    """The newest complete checkpoint of a run folder (or the given checkpoint), verified and loaded.

    An encrypted checkpoint (``hwlm train --encrypt``) is opened with ``key``, else ``$HWLM_DATA_KEY``;
    without either, or with the wrong one, it is one line and nothing is loaded."""
    from hwlm.data import load_tokenizer
    from hwlm.model import Transformer

    ckpt = ckpt_io.resolve_checkpoint(Path(run_or_checkpoint_dir))
    key = ckpt_io.checkpoint_key(ckpt, key)
    ckpt_io.verify_checkpoint(ckpt, key)
    config = ckpt_io.read_json(ckpt / "config.json")
    try:
        model_cfg = from_dict(ModelConfig, config["model"], where=str(ckpt / "config.json"))
    except KeyError:
        raise CheckpointError(f"{ckpt / 'config.json'} has no 'model' section; the checkpoint is damaged") from None
    except HwlmError as exc:
        raise CheckpointError(f"model config in {ckpt} is not valid for this hwlm: {exc}") from None
    model = Transformer(model_cfg)
    compression = config.get("compression")
    if compression:  # a run written by hwlm compress: rebuild its quantized layers before loading
        from hwlm.model.quantized import after_load, apply_compression

        apply_compression(model, compression)
    ckpt_io.load_weights(ckpt, model, "cpu", key)
    model.to(device).eval()
    if compression:
        after_load(model, compression)
    state = ckpt_io.read_json(ckpt / "state.json")
    return LoadedModel(model=model, model_cfg=model_cfg, tokenizer=load_tokenizer(ckpt), step=int(state["step"]),
                       path=ckpt, eot_id=config.get("data", {}).get("eot_id"), run_config=config)


def stream_text(loaded: LoadedModel, prompt: str, max_new_tokens: int, temperature: float = 0.8,
                top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                tokens: Callable[[list[int]], Iterable[int]] | None = None) -> Iterator[str]:
    """Continue ``prompt``, yielding text as soon as it forms whole characters.

    A stream never shows half a character (see :func:`decode_stream`); it stops at the
    end-of-text token. ``tokens`` maps the prompt's ids to new ids in place of ``hwlm.model.generate``
    with the arguments above (speculative, tensor-parallel or ONNX decoding).
    """
    from hwlm.data.normalize import normalize  # the module, not hwlm.data's lazy name (a submodule shadows it)
    from hwlm.model import generate

    prep = (loaded.run_config or {}).get("data", {}).get("prepare", {})
    text = normalize(prompt, prep.get("normalize", "nfkc"), prep.get("strip_control", True)) if prompt else ""
    ids = loaded.tokenizer.encode(text, add_special_tokens=False).ids if text else []
    if not ids:
        if loaded.eot_id is None:
            raise CheckpointError(f"{loaded.path} names no end-of-text token to start from: give a --prompt")
        ids = [loaded.eot_id]  # an empty prompt starts a new document
    if tokens is None:
        new = generate(loaded.model, ids, max_new_tokens, temperature, top_k, top_p, seed, loaded.eot_id)
    else:
        new = tokens(ids)
    yield from decode_stream(loaded.tokenizer, new, loaded.eot_id)


def decode_stream(tokenizer: Any, tokens: Iterable[int], stop_id: int | None = None) -> Iterator[str]:
    """Text of ``tokens`` piece by piece, never splitting a UTF-8 character; stops before ``stop_id``.

    Byte-level BPE tokens can end inside a multi-byte character, which decodes to U+FFFD;
    such tokens are held back until the character is complete. Decoding byte-level tokens in
    pieces that end on character boundaries gives the same text as decoding them all at once.
    """
    pending: list[int] = []
    for token in tokens:
        if token == stop_id:
            break
        pending.append(token)
        piece = tokenizer.decode(pending, skip_special_tokens=False)
        if not piece.endswith("\ufffd") or len(pending) >= _MAX_PENDING_TOKENS:
            yield piece
            pending = []
    if pending:
        yield tokenizer.decode(pending, skip_special_tokens=False)
