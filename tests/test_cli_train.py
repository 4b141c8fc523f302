"""``hwlm train / eval / generate / export`` through ``hwlm.cli.main``: output, exit codes, one-line errors."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from hwlm.cli import main
from tiny import prepare_tiny

FAST = ["--model", "debug", "--batch-size", "4", "--precision", "fp32", "--device", "cpu", "--no-progress",
        "--no-tensorboard", "--eval-batches", "2", "--log-interval", "1", "--peak-flops", "1e9"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_tiny(tmp_path_factory.mktemp("cli"))


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clirun") / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "--max-steps", "8", *FAST]) == 0
    return out


def _one_line_error(capsys: pytest.CaptureFixture, rc: int) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err and err[-1].startswith("hwlm: error: ")
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def test_train_json_and_recipe(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text("[train]\nmax_steps = 3\nlr = 0.002\n\n[model]\nn_layer = 1\n")
    out = tmp_path / "run"
    rc = main(["train", "--config", str(recipe), "--data", str(data), "--out", str(out), "--model-n-embd", "8",
               "--json", *FAST])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 3 and result["val_loss"] > 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["n_layer"] == 1 and saved["model"]["n_embd"] == 8 and saved["train"]["lr"] == 0.002


def test_eval_generate_export(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--device", "cpu", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["step"] == 8 and r["bits_per_byte"] > 0 and r["tokens"] > 0
    assert main(["generate", "--run", str(run), "--prompt", "The dog", "--max-new-tokens", "10", "--seed", "1",
                 "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("The dog")
    assert main(["export", "--run", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "hf" / "model.safetensors").is_file()


def test_resume_auto_continues(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "--max-steps", "2", *FAST]) == 0
    capsys.readouterr()
    assert main(["train", "--data", str(data), "--out", str(out), "--max-steps", "4", "--resume", "auto",
                 "--json", *FAST]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["steps"] == 4
    assert "resumed from" in captured.err and "step-0000002" in captured.err


@pytest.mark.parametrize("argv,message", [
    (["train", "--data", "{tmp}/missing", "--max-steps", "2"], "no manifest.json in"),
    (["train", "--data", "{data}", "--max-steps", "2", "--lr", "-1"], "'lr' is -1.0; it must be more than zero"),
    (["train", "--data", "{data}", "--max-steps", "2", "--model", "nope"], "unknown model preset 'nope'"),
    (["train", "--data", "{data}", "--max-steps", "2", "--keep-checkpoints", "1"], "keep at least 2"),
    (["train", "--data", "{data}"], "the run has no end"),
    (["eval", "--run", "{tmp}/missing"], "does not exist"),
    (["generate", "--run", "{tmp}"], "holds no complete checkpoint"),
])
def test_bad_input_is_one_line(argv: list[str], message: str, data: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture) -> None:
    argv = [a.format(tmp=tmp_path, data=data) for a in argv]
    if argv[0] == "train":
        argv += ["--out", str(tmp_path / "run"), *[a for a in FAST if a not in ("--model", "debug")]]
    line = _one_line_error(capsys, main(argv))
    assert message in line


def test_unknown_recipe_key(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text("[train]\nmax_step = 3\n")
    line = _one_line_error(capsys, main(["train", "--config", str(recipe), "--data", str(data), *FAST]))
    assert "unknown config key 'max_step'" in line and "did you mean 'max_steps'" in line


def test_checkpoint_from_another_model(run: Path, data: Path, capsys: pytest.CaptureFixture) -> None:
    line = _one_line_error(capsys, main(["train", "--data", str(data), "--out", str(run), "--max-steps", "9",
                                         "--resume", "auto", "--model-n-layer", "3", *FAST]))
    assert "another model config" in line and "n_layer=2 vs 3" in line


def test_full_disk_during_save(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    from hwlm.train import checkpoint as ckpt_io

    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "--max-steps", "2", *FAST]) == 0

    def full_disk(obj: object, path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_io, "_save_torch", full_disk)
    line = _one_line_error(capsys, main(["train", "--data", str(data), "--out", str(out), "--max-steps", "4",
                                         "--resume", "auto", *FAST]))
    assert "disk full while writing" in line
    assert [p.name for p in ckpt_io.list_checkpoints(out)] == ["step-0000002"]
    ckpt_io.verify_checkpoint(out / "checkpoints" / "step-0000002")


@pytest.mark.parametrize("flags, message", [
    (["--top-p", "1.5"], "top_p must be in (0, 1] or unset, got 1.5"),
    (["--top-p", "0"], "top_p must be in (0, 1] or unset, got 0.0"),
    (["--temperature", "-1"], "temperature must be >= 0 (0 = greedy), got -1.0"),
])
def test_generate_checks_sampling_flags_before_echoing_the_prompt(flags: list[str], message: str, run: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    rc = main(["generate", "--run", str(run), "--prompt", "The dog", "--device", "cpu", *flags])
    captured = capsys.readouterr()
    assert rc == 1 and captured.out == ""  # nothing echoed
    assert captured.err.strip().splitlines() == [f"hwlm: error: {message}"]


def test_recompute_flag_is_checked(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "--recompute", "some"])
    assert "invalid choice: 'some'" in capsys.readouterr().err
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "--max-steps", "2",
                 "--recompute", "selective", *FAST]) == 0
