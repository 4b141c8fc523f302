"""``--backend auto``'s HybridRunner: a lone row in onnxruntime continues from its own last ``present``,
batches in torch, one slot cache between them; greedy tokens stay those of ``hwlm generate`` in fp32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime", reason="pip install 'hwlm[onnx]'")

from hwlm.export.onnx import OnnxModel, export_onnx  # noqa: E402
from hwlm.model import ModelConfig, Transformer, generate  # noqa: E402
from hwlm.serve.engine import EngineConfig, LLMEngine, SamplingParams, Sequence  # noqa: E402
from hwlm.serve.engine.model_runner import ModelRunner  # noqa: E402
from hwlm.serve.engine.onnx_runner import HybridRunner  # noqa: E402


def _full(model: Transformer, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([ids]))[0][0, -1]


def test_a_slot_reused_by_torch_is_not_continued_from_a_stale_present(tmp_path: Path) -> None:
    """Slot 0 runs alone in onnxruntime to length 4, then a new sequence takes slot 0 and is prefilled by
    torch (in a batch) to the same length: its next lone step must read the slot cache, not the old present."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("debug", vocab_size=300)).eval()
    hybrid = HybridRunner(ModelRunner(model, num_slots=3), OnnxModel.load(export_onnx(model, tmp_path / "x")))
    old, new, other = [5, 9, 17, 4], [30, 31, 32, 33], [7, 7]
    with torch.inference_mode():
        hybrid.step([(old[:2], 0, 0)])
        hybrid.step([(old[2:], 0, 2)])  # lone again: continues from the kept present
        assert hybrid.kept is not None and hybrid.kept[:2] == (0, 4)
        hybrid.step([(new, 0, 0), (other, 1, 0)])  # the old sequence is gone; torch writes slot 0 anew
        assert hybrid.kept is None
        got = hybrid.step([([40], 0, 4)])
    torch.testing.assert_close(got[0], _full(model, new + [40]), atol=1e-4, rtol=1e-4)


def test_lone_then_batched_then_lone_keeps_the_greedy_tokens_of_generate(tiny_run: Path, tmp_path: Path) -> None:
    """One sequence alone (onnxruntime, its present kept), joined by a second (torch's packed steps), then
    alone again (onnxruntime from the slot cache, then from its present): both equal ``hwlm generate``."""
    from hwlm.train.load import load_model

    loaded = load_model(tiny_run)
    model, tok = loaded.model.eval(), loaded.tokenizer
    hybrid = HybridRunner(ModelRunner(model, num_slots=4), OnnxModel.load(export_onnx(model, tmp_path / "onnx")))
    engine = LLMEngine(model, tok, None, EngineConfig(max_num_seqs=4, max_waiting=4), runner=hybrid)
    outs: dict[str, list[int]] = {"a": [], "b": []}

    def seq(name: str, text: str, n: int) -> Sequence:
        def emit(ev) -> None:
            outs[name].extend(ev.token_ids)
        return Sequence(tok.encode(text).ids, SamplingParams(max_tokens=n, temperature=0.0), emit, tok.decode)

    a, b = seq("a", "The cat", 24), seq("b", "A dog ran to the park", 5)
    paths = []
    hybrid_step = hybrid.step

    def spy(rows):  # which back end took each step, and whether a lone step reused its present
        reuse = len(rows) == 1 and hybrid.kept is not None and hybrid.kept[:2] == (rows[0][1], rows[0][2])
        paths.append("torch" if len(rows) > 1 else "kept" if reuse else "onnx")
        return hybrid_step(rows)

    hybrid.step = spy
    engine.scheduler.add(a)
    for _ in range(6):
        engine.step()  # a alone
    engine.scheduler.add(b)
    while len(outs["a"]) < 24:
        engine.step()
    assert outs["a"] == list(generate(model, a.prompt_ids, 24, temperature=0))
    assert outs["b"] == list(generate(model, b.prompt_ids, 5, temperature=0))
    # alone in onnxruntime, the present kept; batched in torch; alone again from the cache, then kept
    first_torch, last_torch = paths.index("torch"), len(paths) - 1 - paths[::-1].index("torch")
    assert paths[0] == "onnx" and set(paths[1:first_torch]) == {"kept"}
    assert paths[last_torch + 1] == "onnx" and set(paths[last_torch + 2:]) == {"kept"}, paths


def test_spin_modes_give_the_same_logits_and_a_bad_one_is_named(tmp_path: Path) -> None:
    import numpy as np

    from hwlm.errors import ConfigError

    torch.manual_seed(0)
    out = export_onnx(Transformer(ModelConfig.from_name("debug", vocab_size=300)).eval(), tmp_path / "x")
    ids = np.array([[5, 9, 17]])
    runs = [OnnxModel.load(out, spin=mode).run(ids, OnnxModel.load(out).empty_past(1))[0] for mode in
            ("always", "run", "never")]
    assert np.array_equal(runs[0], runs[1]) and np.array_equal(runs[0], runs[2])
    with pytest.raises(ConfigError, match="unknown onnxruntime spin mode 'sometimes'; choose always, run, never"):
        OnnxModel.load(out, spin="sometimes")
