"""Encryption at rest end to end: ``prepare --encrypt`` -> ``train --encrypt`` -> resume -> eval, rotation,
and the failures (wrong key, missing key, tampered chunk) as one line with nothing moved or loaded."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cryptography", reason="pip install 'hwlm[crypt]'")

from hwlm.cli import main  # noqa: E402
from hwlm.crypt import WrongKeyError, encrypt_bytes, key_id, load_key  # noqa: E402
from hwlm.data import PrepareConfig, TokenLoader, prepare  # noqa: E402
from hwlm.data.loader import TokenStream  # noqa: E402
from hwlm.data.shards import EncryptedShard  # noqa: E402
from hwlm.errors import ConfigError, DataError  # noqa: E402
from hwlm.train import checkpoint as ckpt_io  # noqa: E402
from tiny import tiny_cfg, write_corpus  # noqa: E402

HEADER = 45  # bytes before chunk 0 (hwlm.crypt's header)


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HWLM_DATA_KEY", raising=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two keys, the tiny corpus prepared plain and encrypted (same settings), and an encrypted 3-step run."""
    from hwlm.train import train

    root = tmp_path_factory.mktemp("enc")
    for name in ("k1.key", "k2.key"):
        assert main(["crypt", "keygen", str(root / name)]) == 0
    write_corpus(root / "text")
    common = dict(inputs=[str(root / "text")], vocab_size=300, val_fraction=0.2, seed=0, tokens_per_shard=2000)
    prepare(PrepareConfig(out=root / "plain", **common))
    prepare(PrepareConfig(out=root / "data", encrypt=True, key_file=root / "k1.key", **common))
    train(tiny_cfg(root / "data", root / "run", max_steps=3, encrypt=True, key_file=root / "k1.key"))
    return {"root": root, "k1": root / "k1.key", "k2": root / "k2.key", "plain": root / "plain",
            "data": root / "data", "run": root / "run"}


def _one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("hwlm: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err  # progress notes aside, one line says what is wrong
    return errors[0]


def _files(folder: Path) -> list[Path]:
    return [f for f in folder.rglob("*") if f.is_file()]


def test_encrypted_shards_hold_no_plaintext_and_read_back_the_same_tokens(world: dict[str, Path]) -> None:
    key = load_key(world["k1"])
    manifest = json.loads((world["data"] / "manifest.json").read_text())
    assert manifest["encryption"]["key_id"] == key_id(key).hex()
    assert all(e["file"].endswith(".bin.enc") for e in manifest["splits"]["train"]["shards"])
    assert len(manifest["splits"]["train"]["shards"]) > 1
    plain_bytes = (world["plain"] / "train" / "shard-00000.bin").read_bytes()
    known = plain_bytes[100:164]  # 32 tokens of real text
    for f in _files(world["data"]):
        blob = f.read_bytes()
        assert known not in blob, f
        assert key.hex().encode() not in blob and key not in blob, f  # the key is never written
    for f in _files(world["run"]):
        assert key.hex().encode() not in f.read_bytes() and key not in f.read_bytes(), f
    plain, enc = TokenStream(world["plain"], "train"), TokenStream(world["data"], "train", key=key)
    assert len(plain) == len(enc)
    for start in (0, 1999, 2000, 3333, len(plain) - 40):  # windows inside and across shard boundaries
        assert np.array_equal(plain.window(start, 40), enc.window(start, 40))


def test_an_encrypted_shard_slices_across_chunk_edges(tmp_path: Path, world: dict[str, Path]) -> None:
    key = load_key(world["k1"])
    tokens = np.arange(1000, dtype="<u2")
    f = tmp_path / "s.bin.enc"
    f.write_bytes(encrypt_bytes(tokens.tobytes(), key, chunk=64))  # 32 tokens a chunk
    shard = EncryptedShard(f, key, np.dtype("<u2"), 1000)
    assert len(shard) == 1000 and np.array_equal(np.asarray(shard), tokens)
    for a, b in ((0, 1), (31, 33), (30, 200), (999, 1000), (500, 500)):
        assert np.array_equal(shard[a:b], tokens[a:b])
    with pytest.raises(DataError, match="expected 2002"):
        EncryptedShard(f, key, np.dtype("<u2"), 1001)


def test_train_resume_and_eval_on_encrypted_data_with_the_key(world: dict[str, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    from hwlm.train import train

    ckpt = world["run"] / "checkpoints" / "step-0000003"
    for name in ("model.safetensors", "optimizer.pt", "trainer_state.pt"):
        assert (ckpt / name).read_bytes()[:8] == b"HWLMENC1", name
    done = json.loads((ckpt / "COMPLETE").read_text())
    assert done["encryption"]["key_id"] == key_id(load_key(world["k1"])).hex()
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    resumed = train(tiny_cfg(world["data"], run, max_steps=6, encrypt=True, key_file=world["k1"], resume="auto"))
    straight = train(tiny_cfg(world["data"], tmp_path / "straight", max_steps=6, encrypt=True, key_file=world["k1"]))
    assert resumed.steps == 6 and resumed.val_loss == straight.val_loss  # the encrypted state round-trips exactly
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--key-file", str(world["k1"]), "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 6


def test_weights_of_many_chunks_round_trip_exactly(tmp_path: Path, world: dict[str, Path]) -> None:
    import torch

    from hwlm.model import ModelConfig, Transformer

    key = load_key(world["k1"])
    cfg = ModelConfig.from_name("debug", vocab_size=4096, n_embd=128)  # embedding alone is 2 MiB: 3+ chunks
    model, fresh = Transformer(cfg), Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters())
    tok = tmp_path / "tokenizer.json"
    tok.write_text("{}")
    ckpt = ckpt_io.save_checkpoint(tmp_path / "run", 1, model, opt, {}, {}, tok, keep=2, key=key)
    assert (ckpt / "model.safetensors").stat().st_size > 2 * (1 << 20)
    ckpt_io.load_weights(ckpt, fresh, "cpu", key)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))


def test_wrong_key_on_data_and_on_checkpoints_is_one_line_and_moves_nothing(world: dict[str, Path], tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    train_args = ["train", "--model", "debug", "--batch-size", "4", "--max-steps", "6", "--device", "cpu",
                  "--precision", "fp32", "--no-progress", "--no-tensorboard", "--peak-flops", "1e9"]
    err = _one_line_error(capsys, [*train_args, "--data", str(world["data"]), "--out", str(tmp_path / "fresh"),
                                   "--key-file", str(world["k2"])])
    assert "data folder" in err and "wrong key" in err
    assert not (tmp_path / "fresh" / "config.json").exists()
    from hwlm.train import train

    run = tmp_path / "run"  # plain data, encrypted checkpoints: the checkpoint's key alone is wrong
    train(tiny_cfg(world["plain"], run, max_steps=3, ckpt_interval=1, encrypt=True, key_file=world["k1"]))
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    err = _one_line_error(capsys, [*train_args, "--data", str(world["plain"]), "--out", str(run), "--resume", "auto",
                                   "--encrypt", "--key-file", str(world["k2"])])
    assert "checkpoint" in err and "wrong key" in err
    assert len(before) == 3 and sorted(p.name for p in (run / "checkpoints").iterdir()) == before  # none moved aside
    err = _one_line_error(capsys, ["eval", "--run", str(run), "--key-file", str(world["k2"]), "--device", "cpu"])
    assert "wrong key" in err
    with pytest.raises(WrongKeyError):
        TokenLoader(world["data"], "train", 2, 16, key=load_key(world["k2"]))


def test_a_missing_key_names_the_flag(world: dict[str, Path], capsys: pytest.CaptureFixture,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    err = _one_line_error(capsys, ["eval", "--run", str(world["run"]), "--device", "cpu"])
    assert "is encrypted" in err and "--key-file" in err and "$HWLM_DATA_KEY" in err
    with pytest.raises(ConfigError, match="data folder .* is encrypted .*--key-file"):
        TokenLoader(world["data"], "train", 2, 16)
    monkeypatch.setenv("HWLM_DATA_KEY", load_key(world["k1"]).hex())  # the environment is the other way
    assert TokenLoader(world["data"], "train", 2, 16).next_batch()[0].shape == (2, 16)


def test_a_tampered_chunk_names_the_file_and_chunk(world: dict[str, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    key = load_key(world["k1"])
    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    shard = data / "train" / "shard-00001.bin.enc"
    blob = bytearray(shard.read_bytes())
    blob[HEADER + 12 + 100] ^= 1  # one ciphertext byte of chunk 0
    shard.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=r"shard-00001\.bin\.enc: chunk 0 fails authentication"):
        TokenLoader(data, "train", 2, 16, key=key)  # verify: the sha256 fails, then the chunk is named
    stream = TokenStream(data, "train", verify=False, key=key)
    with pytest.raises(DataError, match=r"shard-00001\.bin\.enc: chunk 0 fails authentication"):
        stream.window(2000, 16)  # unverified: the read itself refuses the chunk, nothing of it is used

    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    weights = run / "checkpoints" / "step-0000003" / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[HEADER + 12 + 5] ^= 1
    weights.write_bytes(bytes(blob))
    err = _one_line_error(capsys, ["eval", "--run", str(run), "--key-file", str(world["k1"]), "--device", "cpu"])
    assert "model.safetensors" in err and "chunk 0 fails authentication" in err
    # For --resume auto a tampered checkpoint is corrupt (its sha256 fails): moved aside, and with no older one
    # that verifies, the run stops rather than start afresh.
    warnings: list[str] = []
    with pytest.raises(ckpt_io.CheckpointError, match="every checkpoint .* was corrupt"):
        ckpt_io.newest_valid_checkpoint(run, warnings.append, key)
    assert "chunk 0" in warnings[0]
    assert [p.name[:20] for p in (run / "checkpoints").iterdir()] == ["corrupt-step-0000003"]


def test_rotate_then_resume_and_eval_with_the_new_key(world: dict[str, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    from hwlm.train import train

    data, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(world["data"], data)
    shutil.copytree(world["run"], run)
    config = json.loads((run / "config.json").read_text())
    config["data"]["dir"] = str(data.resolve())  # eval reads the run's own (rotated) data folder
    (run / "config.json").write_text(json.dumps(config))
    for folder in (data, run):
        assert main(["crypt", "rotate", str(folder), "--old-key-file", str(world["k1"]),
                     "--new-key-file", str(world["k2"])]) == 0
    with pytest.raises(WrongKeyError):
        TokenLoader(data, "train", 2, 16, key=load_key(world["k1"]))
    result = train(tiny_cfg(data, run, max_steps=6, encrypt=True, key_file=world["k2"], resume="auto"))
    assert result.steps == 6
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--key-file", str(world["k2"]), "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 6


def test_an_interrupted_encrypted_prepare_resumes_to_the_same_tokens(world: dict[str, Path], tmp_path: Path) -> None:
    class Stop(Exception):
        pass

    def stop(shards: int) -> None:
        if shards >= 2:
            raise Stop

    key = load_key(world["k1"])
    base = dict(inputs=[str(world["root"] / "text")], vocab_size=300, val_fraction=0.2, seed=0, tokens_per_shard=2000,
                batch_chars=300, out=tmp_path / "data", encrypt=True, key_file=world["k1"])
    with pytest.raises(Stop):
        prepare(PrepareConfig(**base), _after_checkpoint=stop)
    pending = list((tmp_path / "data").glob("*/.pending-*"))
    assert pending and all(p.name.endswith(".bin.enc") and p.read_bytes()[:8] == b"HWLMENC1" for p in pending)
    with pytest.raises(WrongKeyError):
        prepare(PrepareConfig(**{**base, "key_file": world["k2"], "resume": True}))
    res = prepare(PrepareConfig(**{**base, "resume": True}))
    assert res.resumed
    whole, again = TokenStream(world["plain"], "train"), TokenStream(res.out, "train", key=key)
    assert np.array_equal(whole.window(0, len(whole)), again.window(0, len(again)))


def test_a_stray_key_file_and_a_readable_key_are_refused(tmp_path: Path, world: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="without encrypt"):
        PrepareConfig(key_file=world["k1"])
    os.chmod(world["k2"], 0o644)
    try:
        with pytest.raises(ConfigError, match="chmod 600"):
            prepare(PrepareConfig(out=tmp_path / "d", encrypt=True, key_file=world["k2"]))
        with pytest.raises(ConfigError, match="chmod 600"):
            prepare(PrepareConfig(out=tmp_path / "c", task="classify", encrypt=True, key_file=world["k2"]))
    finally:
        os.chmod(world["k2"], 0o600)
    assert not (tmp_path / "d").exists() and not (tmp_path / "c").exists()  # refused before anything was written


def _encrypted(path: Path) -> bool:
    return path.read_bytes()[:8] == b"HWLMENC1"


@pytest.mark.parametrize("method", ["int8", "distill"])
def test_compress_of_an_encrypted_run_is_encrypted_under_its_key(world: dict[str, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture, method: str) -> None:
    out = tmp_path / "out"
    extra = ["--precision", "w8a16"] if method == "int8" else ["--steps", "2"]
    capsys.readouterr()
    assert main(["compress", "--run", str(world["run"]), "--method", method, *extra, "--no-table",
                 "--key-file", str(world["k1"]), "--out", str(out)]) == 0
    assert f"key id {key_id(load_key(world['k1'])).hex()}" in capsys.readouterr().out
    ckpt = ckpt_io.latest_checkpoint(out)
    assert _encrypted(ckpt / "model.safetensors")  # no plaintext copy of the weights
    assert ckpt_io.read_json(ckpt / "COMPLETE")["encryption"]["key_id"] == key_id(load_key(world["k1"])).hex()
    assert json.loads((out / "compress.json").read_text())["encryption"]["key_id"] == key_id(load_key(world["k1"])).hex()
    err = _one_line_error(capsys, ["eval", "--run", str(out), "--device", "cpu"])
    assert "is encrypted" in err and "--key-file" in err
    assert main(["eval", "--run", str(out), "--key-file", str(world["k1"]), "--device", "cpu", "--json"]) == 0


def test_export_of_an_encrypted_run_is_plain_and_says_so(world: dict[str, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert main(["export", "--run", str(world["run"]), "--key-file", str(world["k1"]), "--out",
                 str(tmp_path / "hf")]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "is encrypted" in line]
    assert len(notes) == 1 and "written in plain" in notes[0]
    assert not _encrypted(tmp_path / "hf" / "model.safetensors")


@pytest.fixture(scope="module")
def cls_world(world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A labelled set prepared for classification encrypted under k1, and a bag-of-words run on it."""
    from classify_tiny import cls_cfg, prepare_cls

    from hwlm.train.classify import train_classifier
    from hwlm.train.task_config import TaskConfig

    root = tmp_path_factory.mktemp("enc-cls")
    data = prepare_cls(root, n=240, encrypt=True, key_file=world["k1"])
    cfg = cls_cfg(data, root / "run", max_steps=6, ckpt_interval=3, eval_interval=3, encrypt=True,
                  key_file=world["k1"])
    train_classifier(cfg, TaskConfig(task="classify", classifier="bow", buckets=256), say=lambda m: None)
    return {"root": root, "data": data, "run": root / "run"}


def test_classification_splits_are_encrypted_and_read_back(world: dict[str, Path], cls_world: dict[str, Path],
                                                           capsys: pytest.CaptureFixture) -> None:
    from hwlm.data.classify import read_split

    data, key = cls_world["data"], load_key(world["k1"])
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["encryption"]["key_id"] == key_id(key).hex()
    texts = [json.loads(line)["text"] for line in (cls_world["root"] / "rows.jsonl").read_text().splitlines()]
    for split in ("train", "val", "test"):
        f = data / manifest["splits"][split]["file"]
        assert f.name == f"{split}.jsonl.enc" and _encrypted(f)
        xs, ys = read_split(data, split, key=key)
        assert len(xs) == len(ys) == manifest["splits"][split]["examples"] and set(xs) <= set(texts)
    blobs = [f.read_bytes() for f in _files(data) if f.name != "rows.jsonl"]
    assert not any(t.encode() in b for t in texts[:50] for b in blobs)  # no row's text in plain
    with pytest.raises(WrongKeyError):
        read_split(data, "train", key=load_key(world["k2"]))
    with pytest.raises(ConfigError, match="is encrypted .*--key-file"):
        read_split(data, "train")
    copy = cls_world["root"] / "tampered"
    shutil.copytree(data, copy)
    blob = bytearray((copy / "val.jsonl.enc").read_bytes())
    blob[HEADER + 12 + 3] ^= 1
    (copy / "val.jsonl.enc").write_bytes(bytes(blob))
    with pytest.raises(DataError, match=r"val\.jsonl\.enc: chunk 0 fails authentication"):
        read_split(copy, "val", key=key)


def test_an_encrypted_classifier_resumes_evaluates_and_predicts_with_the_key(
        world: dict[str, Path], cls_world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from classify_tiny import cls_cfg

    from hwlm.train.classify import train_classifier
    from hwlm.train.task_config import TaskConfig

    ckpt = ckpt_io.latest_checkpoint(cls_world["run"])
    for name in ("model.safetensors", "optimizer.pt", "trainer_state.pt"):
        assert _encrypted(ckpt / name), name
    assert json.loads((ckpt / "labels.json").read_text())["labels"] == ["mid", "neg", "pos"]
    task = TaskConfig(task="classify", classifier="bow", buckets=256)
    run = tmp_path / "run"
    shutil.copytree(cls_world["run"], run)
    shutil.rmtree(run / "checkpoints" / "step-0000006")  # resume from step 3
    common = dict(max_steps=6, ckpt_interval=3, eval_interval=3, encrypt=True, key_file=world["k1"])
    resumed = train_classifier(cls_cfg(cls_world["data"], run, resume="auto", **common), task, say=lambda m: None)
    straight = train_classifier(cls_cfg(cls_world["data"], tmp_path / "straight", **common), task,
                                say=lambda m: None)
    assert resumed.steps == 6 and resumed.val_loss == straight.val_loss  # the encrypted state round-trips exactly
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--key-file", str(world["k1"]), "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 6
    err = _one_line_error(capsys, ["eval", "--run", str(run), "--key-file", str(world["k2"]), "--device", "cpu"])
    assert "wrong key" in err
    rows = tmp_path / "new.jsonl"
    rows.write_text(json.dumps({"text": "a lovely film"}) + "\n")
    assert main(["predict", str(rows), "--run", str(run), "--out", str(tmp_path / "p.jsonl"), "--device", "cpu",
                 "--no-progress", "--key-file", str(world["k1"])]) == 0
    assert json.loads((tmp_path / "p.jsonl").read_text())["label"] in ("mid", "neg", "pos")
    err = _one_line_error(capsys, ["predict", str(rows), "--run", str(run), "--out", str(tmp_path / "q.jsonl"),
                                   "--device", "cpu", "--no-progress"])
    assert "is encrypted" in err and not (tmp_path / "q.jsonl").exists()


def test_an_encrypted_transformer_classifier_exports_plain_with_a_note(world: dict[str, Path], cls_world: dict[str, Path],
                                                                      tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    from classify_tiny import cls_cfg

    from hwlm.train.classify import train_classifier
    from hwlm.train.task_config import TaskConfig

    run = tmp_path / "tf"
    train_classifier(cls_cfg(cls_world["data"], run, max_steps=1, eval_interval=0, encrypt=True, key_file=world["k1"]),
                     TaskConfig(task="classify", classifier="transformer", pooling="last"), say=lambda m: None)
    assert _encrypted(ckpt_io.latest_checkpoint(run) / "model.safetensors")
    capsys.readouterr()
    assert main(["export", "--run", str(run), "--key-file", str(world["k1"]), "--out", str(tmp_path / "hf")]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "is encrypted" in line]
    assert len(notes) == 1 and "written in plain" in notes[0]
    assert not _encrypted(tmp_path / "hf" / "model.safetensors")


def test_an_encrypted_chat_fine_tune_resumes_with_the_key(world: dict[str, Path], tmp_path: Path) -> None:
    from hwlm.train.chat import train_chat
    from hwlm.train.load import load_model
    from hwlm.train.task_config import TaskConfig

    dialogues = tmp_path / "d.jsonl"
    dialogues.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"say {w}"},
                                                          {"role": "assistant", "content": w}]}) + "\n"
                                 for w in ["cat", "dog", "sun", "moon"] * 3))
    task = TaskConfig(task="chat", init_from=world["run"])
    common = dict(encrypt=True, key_file=world["k1"], ckpt_interval=2, batch_size=2)
    train_chat(tiny_cfg(dialogues, tmp_path / "chat", max_steps=2, **common), task, say=lambda m: None)
    ckpt = ckpt_io.latest_checkpoint(tmp_path / "chat")
    assert all(_encrypted(ckpt / n) for n in ("model.safetensors", "optimizer.pt", "trainer_state.pt"))
    resumed = train_chat(tiny_cfg(dialogues, tmp_path / "chat", max_steps=4, resume="auto", **common), task,
                         say=lambda m: None)
    straight = train_chat(tiny_cfg(dialogues, tmp_path / "straight", max_steps=4, **common), task, say=lambda m: None)
    assert resumed.steps == 4 and resumed.val_loss == straight.val_loss
    assert load_model(tmp_path / "chat", "cpu", load_key(world["k1"])).step == 4
    with pytest.raises(ConfigError, match="is encrypted"):
        load_model(tmp_path / "chat", "cpu")


def test_serve_opens_an_encrypted_run_with_its_key_file(world: dict[str, Path], tmp_path: Path) -> None:
    """``hwlm serve --key-file``: the engine process reads the key and serves the encrypted run; without a key
    the server stops at start-up with one line naming --key-file."""
    pytest.importorskip("fastapi", reason="pip install 'hwlm[serve]'")
    import subprocess
    import sys

    from serve_helpers import MODEL, start_server
    server = start_server(world["run"], tmp_path / "srv", "--key-file", str(world["k1"]))
    try:
        got = server.client().completions.create(model=MODEL, prompt="the", max_tokens=3, temperature=0)
        assert got.usage.completion_tokens >= 1 and got.choices[0].finish_reason in ("stop", "length")
    finally:
        server.stop()
    env = {k: v for k, v in os.environ.items() if k != "HWLM_DATA_KEY"}
    done = subprocess.run([sys.executable, "-m", "hwlm", "serve", "--run", str(world["run"]), "--port", "0",
                           "--no-auth"], capture_output=True, text=True, timeout=120, env=env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and lines and "--key-file" in lines[-1] and "Traceback" not in done.stderr
