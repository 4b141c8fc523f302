"""Chat fine-tuning: the shared template, the assistant-only loss mask, learning to answer, LoRA and resume."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest

from hwlm.cli import main
from hwlm.data.chat import render_prompt, training_segments
from hwlm.errors import ConfigError, DataError
from hwlm.train.chat import encode_conversation, train_chat
from hwlm.train.task_config import TaskConfig
from tiny import tiny_cfg

PAIRS = [("cat", "dog"), ("sun", "moon"), ("red", "blue"), ("day", "night"), ("up", "down")]


def _dialogues(path: Path, n: int = 60) -> Path:
    rng = random.Random(0)
    lines = []
    for _ in range(n):
        a, b = rng.choice(PAIRS)
        lines.append({"messages": [{"role": "user", "content": f"opposite of {a}?"},
                                   {"role": "assistant", "content": f"{b}."}]})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_template_matches_the_server_default() -> None:
    serve_chat = pytest.importorskip("hwlm.serve.chat")
    msgs = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    assert render_prompt(msgs) == serve_chat.ChatTemplate(None).render(msgs)
    segs = training_segments(msgs[:3])
    assert "".join(t for t, _ in segs) == render_prompt(msgs[:2]) + " Hello."
    assert [t for t, a in segs if a] == [" Hello."]


def test_loss_mask_covers_only_assistant_tokens(tiny_data: Path) -> None:
    from hwlm.data import load_tokenizer

    tok = load_tokenizer(tiny_data)
    msgs = [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "a dog"},
            {"role": "user", "content": "and?"}, {"role": "assistant", "content": "the park"}]
    x, y = encode_conversation(tok, msgs, 0, 1000)
    learned = tok.decode([t for t in y if t not in (-1, 0)])
    assert learned == " a dog\n the park" and y[-1] == 0  # the end-of-text is learned too
    assert x[1:] == [t for t in x[1:]] and len(x) == len(y)


@pytest.mark.slow
def test_chat_fine_tune_learns_to_answer(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _dialogues(tmp_path / "d.jsonl")
    out = tmp_path / "chat"
    rc = main(["train", "--task", "chat", "--init-from", str(tiny_run), "--data", str(data), "--out", str(out),
               "--max-steps", "300", "--batch-size", "16", "--lr", "0.01", "--min-lr", "0.001", "--warmup", "10",
               "--eval-interval", "100", "--device", "cpu", "--no-progress", "--no-tensorboard", "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert r["val_loss"] < 0.5 * r["first_val_loss"], r
    from hwlm.train.load import load_model, stream_text

    loaded = load_model(out)  # an ordinary LM run: what hwlm serve loads
    prompt = render_prompt([{"role": "user", "content": "opposite of sun?"}])
    text = "".join(stream_text(loaded, prompt, 6, temperature=0.0))
    assert text.strip().startswith("moon"), text


def test_lora_chat_and_resume(tiny_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    data = _dialogues(tmp_path / "d.jsonl", 30)
    cfg = tiny_cfg(data, tmp_path / "lora", max_steps=6, ckpt_interval=3, eval_interval=3, batch_size=4)
    task = TaskConfig(task="chat", init_from=tiny_run, lora_rank=2)
    whole = train_chat(cfg, task, say=lambda m: None)
    part = dataclasses.replace(cfg, out=tmp_path / "part")
    train_chat(part, task, say=lambda m: None, stop_at_step=3)
    again = train_chat(dataclasses.replace(part, resume="auto"), task, say=lambda m: None)
    assert whole.trained_params < whole.params and again.steps == 6
    assert again.val_loss == pytest.approx(whole.val_loss, abs=1e-6)


def test_chat_bad_input(tiny_run: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(DataError, match="no assistant turn"):
        train_chat(tiny_cfg(bad, tmp_path / "x"), TaskConfig(task="chat", init_from=tiny_run), say=lambda m: None)
    with pytest.raises(ConfigError, match="--init-from"):
        train_chat(tiny_cfg(_dialogues(tmp_path / "d.jsonl", 4), tmp_path / "y"), TaskConfig(task="chat"),
                   say=lambda m: None)
