"""``--key-file`` on every command that reads encrypted data or runs beyond train/eval (those are in
test_encrypt_at_rest.py): ``hwlm bench infer --run``, ``hwlm tune --data`` and ``hwlm plan train --data``
open folders made by ``hwlm prepare --encrypt`` with the key file, refuse a loose one, and without a key
stop with the one line naming ``--key-file``; ``plan`` decrypts without importing torch."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("cryptography", reason="pip install 'hwlm[crypt]'")

from hwlm.cli import main  # noqa: E402
from hwlm.crypt import load_key  # noqa: E402
from tiny import tiny_cfg, write_corpus  # noqa: E402

ENCRYPTED = b"HWLMENC1"


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HWLM_DATA_KEY", raising=False)


@pytest.fixture(scope="module")
def enc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two keys, a loose (0644) copy of the first, the tiny corpus through ``hwlm prepare --encrypt``, a
    3-step encrypted run on it, and a labelled set prepared plain and encrypted with the same settings."""
    from classify_tiny import rows, write_jsonl

    from hwlm.train import train

    root = tmp_path_factory.mktemp("enc-cmd")
    for name in ("k1.key", "k2.key"):
        assert main(["crypt", "keygen", str(root / name)]) == 0
    loose = root / "loose.key"
    loose.write_text((root / "k1.key").read_text())
    loose.chmod(0o644)
    write_corpus(root / "text")
    assert main(["prepare", str(root / "text"), "--out", str(root / "data"), "--vocab-size", "300",
                 "--val-fraction", "0.2", "--encrypt", "--key-file", str(root / "k1.key")]) == 0
    train(tiny_cfg(root / "data", root / "run", max_steps=3, encrypt=True, key_file=root / "k1.key"))
    write_jsonl(root / "rows.jsonl", rows(240))
    cls = ["prepare", "--task", "classify", str(root / "rows.jsonl"), "--vocab-size", "300"]
    assert main([*cls, "--out", str(root / "cls-plain")]) == 0
    assert main([*cls, "--out", str(root / "cls"), "--encrypt", "--key-file", str(root / "k1.key")]) == 0
    return {"k1": root / "k1.key", "k2": root / "k2.key", "loose": loose, "data": root / "data",
            "run": root / "run", "cls": root / "cls", "cls_plain": root / "cls-plain"}


def _one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("hwlm: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_the_fixture_data_is_really_encrypted(enc: dict[str, Path]) -> None:
    manifest = json.loads((enc["data"] / "manifest.json").read_text())
    shards = manifest["splits"]["train"]["shards"]
    assert manifest["encryption"] and all((enc["data"] / s["file"]).read_bytes()[:8] == ENCRYPTED for s in shards)
    cls = json.loads((enc["cls"] / "manifest.json").read_text())
    assert (enc["cls"] / cls["splits"]["train"]["file"]).read_bytes()[:8] == ENCRYPTED


# --------------------------------------------------------------------------- plan train --data


def _plan(*extra: str) -> list[str]:
    return ["plan", "train", "--config", "lstm-sentences", "--hardware", "h100-sxm", *extra]


def test_plan_reads_an_encrypted_folder_with_its_key_file_torch_free(enc: dict[str, Path]) -> None:
    code = ("import json, sys; from hwlm.cli import main; "
            f"rc = main({_plan('--data', str(enc['cls']), '--key-file', str(enc['k1']), '--json')!r}); "
            "assert rc == 0, rc; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]; "
            "assert not bad, 'hwlm plan imported torch to decrypt'")
    env = {k: v for k, v in os.environ.items() if k != "HWLM_DATA_KEY"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout)
    plain = subprocess.run([sys.executable, "-m", "hwlm", *_plan("--data", str(enc["cls_plain"]), "--json")],
                           capture_output=True, text=True, timeout=120, env=env)
    want = json.loads(plain.stdout)
    # the same rows prepared plain and encrypted: the decrypted workload is the plain one
    assert got["examples"] == want["examples"] > 0 and got["tokens"] == want["tokens"] > 0
    assert got["steps"] == want["steps"] and got["flops"] == want["flops"]


def test_plan_without_a_key_wrong_key_or_loose_key(enc: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    err = _one_line_error(capsys, _plan("--data", str(enc["cls"])))
    assert "is encrypted" in err and "--key-file FILE (mode 0600)" in err
    assert "wrong key" in _one_line_error(capsys, _plan("--data", str(enc["cls"]), "--key-file", str(enc["k2"])))
    assert "chmod 600" in _one_line_error(capsys, _plan("--data", str(enc["cls"]), "--key-file", str(enc["loose"])))
    assert "give --data" in _one_line_error(capsys, _plan("--key-file", str(enc["k1"])))


# --------------------------------------------------------------------------- bench infer --run


def _bench(run: Path, out: Path, *extra: str) -> list[str]:
    return ["bench", "infer", "--run", str(run), "--device", "cpu", "--batch-sizes", "1", "--prompt-lens", "4",
            "--new-tokens", "2", "--repeats", "1", "--energy", "off", "--out", str(out), *extra]


def test_bench_infer_times_an_encrypted_run_with_its_key_file(enc: dict[str, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    assert (next((enc["run"] / "checkpoints").iterdir()) / "model.safetensors").read_bytes()[:8] == ENCRYPTED
    out = tmp_path / "r.json"
    assert main(_bench(enc["run"], out, "--key-file", str(enc["k1"]))) == 0
    text = out.read_text()
    record = json.loads(text)
    assert record["summary"]["b1_p4_ttft_ms"] > 0
    assert record["config"]["key_file"] == str(enc["k1"])  # the path is recorded, never the key
    assert load_key(enc["k1"]).hex() not in text


def test_bench_infer_without_a_key_wrong_key_or_loose_key(enc: dict[str, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "r.json"
    err = _one_line_error(capsys, _bench(enc["run"], out))
    assert "is encrypted" in err and "--key-file FILE (mode 0600)" in err
    assert "wrong key" in _one_line_error(capsys, _bench(enc["run"], out, "--key-file", str(enc["k2"])))
    assert "chmod 600" in _one_line_error(capsys, _bench(enc["run"], out, "--key-file", str(enc["loose"])))
    err = _one_line_error(capsys, ["bench", "infer", "--device", "cpu", "--key-file", str(enc["k1"])])
    assert "give --run" in err
    if importlib.util.find_spec("onnxruntime") is not None:  # the key is right, but onnx would write plain weights
        err = _one_line_error(capsys, _bench(enc["run"], out, "--key-file", str(enc["k1"]), "--backend", "onnx"))
        assert "is encrypted" in err and "plain temporary ONNX file" in err
    assert not out.exists()


# --------------------------------------------------------------------------- tune --data

SPACE = """
[tune]
trials = 1
trial_budget = "2s"
eval_interval = 2

[space]
lr = {low = 1e-3, high = 1e-2, log = true}

[train]
model = "debug"
batch_size = 4
warmup = 1
eval_batches = 1
log_interval = 1
ckpt_interval = 1000
precision = "fp32"
peak_flops = 1e9
"""


def _tune(space: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["tune", "--config", str(space), "--data", str(data), "--out", str(out), "--device", "cpu",
            "--no-prune", "--price-on", "h100-sxm", *extra]


def test_tune_without_a_key_wrong_key_or_loose_key_stops_before_any_trial(
        enc: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("optuna")
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    out = tmp_path / "study"
    err = _one_line_error(capsys, _tune(space, enc["data"], out))
    assert "is encrypted" in err and "--key-file FILE (mode 0600)" in err
    assert "wrong key" in _one_line_error(capsys, _tune(space, enc["data"], out, "--key-file", str(enc["k2"])))
    assert "chmod 600" in _one_line_error(capsys, _tune(space, enc["data"], out, "--key-file", str(enc["loose"])))
    assert not out.exists()  # no study, no trial


@pytest.mark.slow
def test_tune_trains_on_encrypted_data_and_its_trials_are_encrypted(enc: dict[str, Path], tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("optuna")
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    out = tmp_path / "study"
    capsys.readouterr()
    assert main(_tune(space, enc["data"], out, "--key-file", str(enc["k1"]), "--json")) == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["best_trial"] == 0 and result["best_value"] > 0
    ckpts = sorted((out / "trials" / "0000" / "run" / "checkpoints").glob("step-*"))
    assert ckpts and (ckpts[-1] / "model.safetensors").read_bytes()[:8] == ENCRYPTED  # as secret as its data
    header = (out / "best.toml").read_text().splitlines()[2]
    assert header.endswith(f"--encrypt --key-file {enc['k1']}")
    key = load_key(enc["k1"]).hex()
    assert not any(key in f.read_text(errors="replace") for f in out.rglob("*") if f.is_file())
