"""Speculative decoding: greedy output identical to plain decoding with a draft that is sometimes wrong,
the accept/reject rule samples the target's distribution, stopping, and one-line errors for a draft
with another vocabulary or tokenizer."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from hwlm.cli import main
from hwlm.errors import ConfigError
from hwlm.model import ModelConfig, Transformer, generate
from hwlm.model.generation import filtered_probs
from hwlm.model.speculative import SpecStats, check_draft, speculative_generate

V = 64


def target_of(name: str) -> Transformer:
    """Untied, sharpened weights: varied greedy tokens (not a copy of the input) and no near-ties."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name(name, vocab_size=V, tie_embeddings=False, block_size=64)).eval()
    with torch.no_grad():
        model.wte.weight.mul_(20)
        model.lm_head.weight.mul_(20)
    return model


def noisy_copy(model: Transformer, scale: float = 0.4) -> Transformer:
    """A draft that agrees with the target often but not always."""
    draft = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale * p.std())
    return draft


@pytest.mark.parametrize("name", ["debug", "llama-debug"])
@pytest.mark.parametrize("k", [1, 4])
def test_greedy_output_is_plain_greedy_decoding(name: str, k: int) -> None:
    target = target_of(name)
    draft = noisy_copy(target)
    prompt, n = [3, 14, 15], 50
    stats = SpecStats()
    got = list(speculative_generate(target, draft, prompt, n, k=k, temperature=0, stats=stats))
    assert got == list(generate(target, prompt, n, temperature=0))
    assert 0 < stats.acceptance_rate < 1  # the draft was right sometimes and wrong sometimes
    assert stats.emitted == n and stats.target_passes < n
    # A smaller draft of another shape (fewer layers, half the context: its window slides alone) gives the
    # same tokens too.
    torch.manual_seed(5)
    small = Transformer(ModelConfig.from_name(name, vocab_size=V, n_layer=1, block_size=32)).eval()
    assert list(speculative_generate(target, small, prompt, n, k=k, temperature=0)) == got


def test_stops_after_eos_and_at_max_new_tokens() -> None:
    target = target_of("debug")
    greedy = list(generate(target, [5], 30, temperature=0))
    eos = greedy[7]
    out = list(speculative_generate(target, noisy_copy(target), [5], 30, k=4, temperature=0, eos_id=eos))
    assert out == greedy[:greedy.index(eos) + 1]
    assert list(speculative_generate(target, target, [5], 3, k=4, temperature=0)) == greedy[:3]
    assert list(speculative_generate(target, target, [5], 0, k=4, temperature=0)) == []


def test_long_output_slides_the_window() -> None:
    target, draft = target_of("llama-debug"), noisy_copy(target_of("llama-debug"))
    out = list(speculative_generate(target, draft, [1, 2, 3], 3 * target.cfg.block_size, k=4, temperature=0))
    assert len(out) == 3 * target.cfg.block_size and all(0 <= t < V for t in out)


def test_the_accept_reject_rule_samples_the_target_distribution() -> None:
    """Leviathan et al.'s rule: a guess drawn from q, kept with min(1, p/q), else a draw from max(0, p - q)."""
    from hwlm.model.speculative import _accept

    p = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    q = torch.tensor([0.1, 0.1, 0.2, 0.3, 0.3])  # far from p, and putting mass where p has none
    gen = torch.Generator().manual_seed(0)
    n, counts = 5000, torch.zeros(5)
    for _ in range(n):
        guess = int(torch.multinomial(q, 1, generator=gen))
        accepted, nxt = _accept(torch.stack([p, p]), q.view(1, -1), [guess], gen)
        counts[guess if accepted else nxt] += 1
    tv = 0.5 * (counts / n - p).abs().sum().item()
    assert tv < 0.03, f"total variation {tv:.3f} from the target distribution"


def test_sampling_is_seeded_and_differs_from_greedy() -> None:
    target = target_of("debug")
    draft = noisy_copy(target)
    run = lambda seed: list(speculative_generate(target, draft, [3, 14], 30, k=3, temperature=1.0,  # noqa: E731
                                                 seed=seed))
    assert run(4) == run(4) and run(4) != run(5)


def test_a_draft_with_another_vocabulary_or_tokenizer_is_refused() -> None:
    target = target_of("debug")
    other = Transformer(ModelConfig.from_name("debug", vocab_size=V + 1))
    with pytest.raises(ConfigError, match=f"the draft has a vocabulary of {V + 1} tokens, the target {V}"):
        list(speculative_generate(target, other, [1], 3, temperature=0))
    with pytest.raises(ConfigError, match="trained with another tokenizer"):
        check_draft(target, target, {"a": 0, "b": 1}, {"a": 1, "b": 0})
    with pytest.raises(ConfigError, match="at least 1 token per round"):
        list(speculative_generate(target, target, [1], 3, k=0, temperature=0))


def test_cli_draft_gives_the_plain_greedy_text_and_reports_acceptance(tiny_run: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    args = ["generate", "--run", str(tiny_run), "--prompt", "The dog", "--max-new-tokens", "20", "--temperature", "0"]
    assert main(args) == 0
    plain = capsys.readouterr().out
    assert main(args + ["--draft", str(tiny_run), "--draft-k", "3"]) == 0
    out = capsys.readouterr()
    assert out.out == plain
    assert "speculative: " in out.err and "draft tokens accepted (100%)" in out.err  # the run drafts for itself


@pytest.mark.slow
def test_cli_draft_from_other_data_is_one_line(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from hwlm.data import PrepareConfig, prepare
    from hwlm.train import train
    from tiny import tiny_cfg, write_corpus

    write_corpus(tmp_path / "text", n_docs=40, seed=3)
    data = tmp_path / "data"
    prepare(PrepareConfig(inputs=[str(tmp_path / "text")], out=data, vocab_size=280, val_fraction=0.2, seed=0))
    train(tiny_cfg(data, tmp_path / "other", max_steps=1, eval_interval=0, ckpt_interval=1))
    capsys.readouterr()
    assert main(["generate", "--run", str(tiny_run), "--draft", str(tmp_path / "other"), "--max-new-tokens",
                 "3"]) == 1
    err = capsys.readouterr().err.strip()
    assert "has a vocabulary of 280 tokens, the target 300" in err and len(err.splitlines()) == 1
