"""Encryption at rest (``hwlm.crypt``): chunked AES-256-GCM, range reads, tamper and wrong-key errors, rotation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("cryptography", reason="pip install 'hwlm[crypt]'")

from hwlm.cli import main  # noqa: E402
from hwlm.crypt import (EncryptedReader, WrongKeyError, encrypt_bytes, is_encrypted, load_key, new_key_file,  # noqa: E402,E501
                        read_encrypted, rotate_dir, write_encrypted)
from hwlm.errors import ConfigError, DataError  # noqa: E402

CHUNK = 64  # small chunks: many of them in a few hundred bytes
HEADER, STRIDE = 45, CHUNK + 28


def _key(folder: Path, name: str = "k.key") -> tuple[Path, bytes]:
    path = folder / name
    assert main(["crypt", "keygen", str(path)]) == 0
    return path, load_key(path)


def test_round_trip_and_range_reads_touch_only_their_chunks(tmp_path: Path) -> None:
    _, key = _key(tmp_path)
    data = os.urandom(1000)
    f = tmp_path / "a.enc"
    write_encrypted(f, data, key, chunk=CHUNK)
    assert is_encrypted(f) and data not in f.read_bytes()
    assert f.stat().st_size == HEADER + 16 * 28 + 1000  # 16 chunks of at most 64 bytes
    with EncryptedReader(f, key) as r:
        assert r.read() == data and r.read(130, 70) == data[130:200] and r.read(999, 1) == data[999:]
        seen = []
        r._chunk = (lambda orig: lambda i: seen.append(i) or orig(i))(r._chunk)
        r.read(130, 70)
        assert seen == [2, 3]  # bytes 130..199 live in chunks 2 and 3 only
        r.read(140, 40)
        r.read(200, 10)
        assert seen == [2, 3]  # the last two chunks are cached: reads within them decrypt nothing
        r.read(0, 1)
        assert seen == [2, 3, 0]
    write_encrypted(tmp_path / "empty.enc", b"", key)
    assert read_encrypted(tmp_path / "empty.enc", key) == b""


def test_wrong_key_is_its_own_error(tmp_path: Path) -> None:
    _, key = _key(tmp_path)
    _, other = _key(tmp_path, "other.key")
    write_encrypted(tmp_path / "a.enc", b"secret", key)
    with pytest.raises(WrongKeyError, match="wrong key"):
        read_encrypted(tmp_path / "a.enc", other)


def test_tampered_reordered_swapped_and_truncated_chunks_are_named(tmp_path: Path) -> None:
    _, key = _key(tmp_path)
    data = os.urandom(5 * CHUNK)
    f = tmp_path / "a.enc"
    good = encrypt_bytes(data, key, CHUNK)
    chunk = lambda blob, i: blob[HEADER + i * STRIDE:HEADER + (i + 1) * STRIDE]  # noqa: E731
    flipped = bytearray(good)
    flipped[HEADER + 2 * STRIDE + 20] ^= 1
    reordered = good[:HEADER] + chunk(good, 1) + chunk(good, 0) + good[HEADER + 2 * STRIDE:]
    other = encrypt_bytes(os.urandom(5 * CHUNK), key, CHUNK)  # same key, another file id
    swapped = good[:HEADER + 3 * STRIDE] + chunk(other, 3) + good[HEADER + 4 * STRIDE:]
    for blob, where in ((bytes(flipped), "chunk 2"), (reordered, "chunk 0"), (swapped, "chunk 3")):
        f.write_bytes(blob)
        with pytest.raises(DataError, match=where):
            read_encrypted(f, key)
    f.write_bytes(good[:HEADER + 4 * STRIDE])  # cut at a chunk boundary
    with pytest.raises(DataError, match="truncated"):
        read_encrypted(f, key)


def test_key_files_must_be_private_and_the_environment_works(tmp_path: Path, monkeypatch) -> None:
    path, key = _key(tmp_path)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_key(path)
    monkeypatch.setenv("HWLM_DATA_KEY", key.hex())
    assert load_key(None) == key
    monkeypatch.setenv("HWLM_DATA_KEY", "zz")
    with pytest.raises(ConfigError, match="64 hex digits"):
        load_key(None)
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        new_key_file(path)


def test_rotate_reencrypts_the_folder_under_the_new_key(tmp_path: Path, capsys) -> None:
    old_path, old = _key(tmp_path)
    new_path, new = _key(tmp_path, "new.key")
    folder = tmp_path / "data"
    (folder / "train").mkdir(parents=True)
    write_encrypted(folder / "train" / "shard-0.bin.enc", b"x" * 300, old, chunk=CHUNK)
    write_encrypted(folder / "manifest.json.enc", b"{}", old)
    (folder / "README").write_text("plain")
    assert main(["crypt", "rotate", str(folder), "--old-key-file", str(old_path), "--new-key-file",
                 str(new_path)]) == 0
    assert "2 files re-encrypted" in capsys.readouterr().out
    assert read_encrypted(folder / "train" / "shard-0.bin.enc", new) == b"x" * 300
    assert (folder / "README").read_text() == "plain"
    with pytest.raises(WrongKeyError):
        read_encrypted(folder / "manifest.json.enc", old)
    with pytest.raises(WrongKeyError):  # rotating with the wrong old key changes nothing
        rotate_dir(folder, old, new)
    assert read_encrypted(folder / "manifest.json.enc", new) == b"{}"


def test_rotate_rewrites_the_digests_and_key_ids_of_plain_indexes(tmp_path: Path, monkeypatch) -> None:
    import hashlib
    import json

    from hwlm.crypt import encryption_section, key_for

    _, old = _key(tmp_path)
    _, new = _key(tmp_path, "new.key")
    folder = tmp_path / "run"
    write_encrypted(folder / "model.bin", b"w" * 500, old, chunk=CHUNK)
    digest = hashlib.sha256((folder / "model.bin").read_bytes()).hexdigest()
    index = {"files": {"model.bin": digest, "note.txt": "abc"}, "encryption": encryption_section(old)}
    (folder / "COMPLETE").write_text(json.dumps(index))
    rotate_dir(folder, old, new)
    after = json.loads((folder / "COMPLETE").read_text())
    assert after["files"] == {"model.bin": hashlib.sha256((folder / "model.bin").read_bytes()).hexdigest(),
                              "note.txt": "abc"} and after["files"]["model.bin"] != digest
    assert key_for("run", after["encryption"], new) == new
    with pytest.raises(WrongKeyError, match="wrong key"):
        key_for("run", after["encryption"], old)
    monkeypatch.delenv("HWLM_DATA_KEY", raising=False)
    with pytest.raises(ConfigError, match="--key-file"):
        key_for("run", after["encryption"], None)  # no key and no $HWLM_DATA_KEY: one line naming the flag


def test_rotate_copies_a_corrupt_checkpoint_set_aside_as_it_is_with_a_note(tmp_path: Path, capsys) -> None:
    old_path, old = _key(tmp_path)
    new_path, new = _key(tmp_path, "new.key")
    run = tmp_path / "run"
    good = run / "checkpoints" / "step-0000006"
    aside = run / "checkpoints" / "corrupt-step-0000003-20261203T000000Z"
    write_encrypted(good / "model.safetensors", b"w" * 300, old, chunk=CHUNK)
    write_encrypted(aside / "model.safetensors", b"v" * 300, old, chunk=CHUNK)
    blob = bytearray((aside / "model.safetensors").read_bytes())
    blob[HEADER + 20] ^= 1  # the reason it was set aside: a chunk that no longer decrypts
    (aside / "model.safetensors").write_bytes(bytes(blob))
    (aside / "COMPLETE").write_text('{"files": {}}')
    capsys.readouterr()
    assert main(["crypt", "rotate", str(run), "--old-key-file", str(old_path), "--new-key-file",
                 str(new_path)]) == 0
    out, err = capsys.readouterr()
    assert "1 files re-encrypted" in out
    notes = err.strip().splitlines()
    assert len(notes) == 1 and aside.name in notes[0] and "set aside as corrupt" in notes[0]
    assert read_encrypted(good / "model.safetensors", new) == b"w" * 300
    assert (aside / "model.safetensors").read_bytes() == bytes(blob)  # kept for a post-mortem, untouched
    assert (aside / "COMPLETE").read_text() == '{"files": {}}'
