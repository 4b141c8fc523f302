"""``--key-file`` where nothing is encrypted: every command that takes it says so in one line on stderr
(:func:`hwlm.crypt.warn_unused_key`), and goes on; a key that opens something, or ``--encrypt``, is silent."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("cryptography", reason="pip install 'hwlm[crypt]'")

from hwlm.cli import main  # noqa: E402
from hwlm.crypt import holds_encrypted, load_key, warn_unused_key, write_encrypted  # noqa: E402
from tiny import tiny_cfg  # noqa: E402


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HWLM_DATA_KEY", raising=False)


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("key") / "k.key"
    assert main(["crypt", "keygen", str(path)]) == 0
    return path


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("hwlm: warning: --key-file")]


# --------------------------------------------------------------------------- the helper


def test_holds_encrypted_looks_below_a_folder(tmp_path: Path, key: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "plain.bin").write_bytes(b"HWLMENC0 not quite")
    assert not holds_encrypted(tmp_path) and not holds_encrypted(tmp_path / "a" / "plain.bin")
    write_encrypted(tmp_path / "a" / "b" / "x.bin", b"secret", load_key(key))
    assert holds_encrypted(tmp_path) and holds_encrypted(tmp_path / "a" / "b" / "x.bin")
    assert not holds_encrypted(tmp_path / "missing")


def _data_folder(root: Path, shards: int, section: dict | None = None, first: bytes = b"\0" * 64) -> Path:
    """A data folder as `hwlm prepare` lays it out: manifest.json (with ``section`` as its encryption) and
    ``shards`` files under train/, the first of them holding ``first``."""
    import json

    (root / "train").mkdir(parents=True)
    files = [f"train/shard-{i:05d}.bin" for i in range(shards)]
    for i, name in enumerate(files):
        (root / name).write_bytes(first if i == 0 else b"\0" * 64)
    manifest = {"version": 1, "splits": {"train": {"shards": [{"file": f} for f in files]}},
                **({"encryption": section} if section else {})}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_holds_encrypted_decides_an_indexed_folder_by_its_index(tmp_path: Path, key: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A data folder (manifest.json) or checkpoint (COMPLETE) is decided by its index, whatever its number of
    shards: no shard is opened. Readers decrypt by the index, so a shard that only looks encrypted under a
    plain manifest is not opened by the key either."""
    import hwlm.crypt as crypt
    from hwlm.crypt import encryption_section

    opened: list[Path] = []
    real = crypt.is_encrypted
    monkeypatch.setattr(crypt, "is_encrypted", lambda f: opened.append(Path(f)) or real(f))
    plain = _data_folder(tmp_path / "plain", 200, first=b"HWLMENC1 looks encrypted")
    assert not holds_encrypted(plain) and opened == []
    enc = _data_folder(tmp_path / "enc", 200, section=encryption_section(load_key(key)))
    assert holds_encrypted(enc) and opened == []
    # a run: its top-level files are read (no index there), each checkpoint by its COMPLETE
    run = tmp_path / "run"
    (run / "checkpoints" / "step-1").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "checkpoints" / "step-1" / "model.safetensors").write_bytes(b"\0" * 64)
    (run / "checkpoints" / "step-1" / "COMPLETE").write_text('{"version": 1, "step": 1, "files": {}}')
    assert not holds_encrypted(run) and opened == [run / "config.json"]
    (run / "checkpoints" / "step-1" / "COMPLETE").write_text(
        '{"version": 1, "step": 1, "files": {}, "encryption": {"key_id": "x"}}')
    assert holds_encrypted(run)


def test_holds_encrypted_reads_the_files_where_no_hwlm_index_is(tmp_path: Path, key: Path) -> None:
    """A manifest.json that is not hwlm's (no version and file list), or one that is not JSON, decides
    nothing: the files are read, as in any folder hwlm did not write."""
    for i, text in enumerate(('{"name": "my data"}', "not json")):
        folder = tmp_path / f"f{i}"
        folder.mkdir()
        (folder / "manifest.json").write_text(text)
        (folder / "a.bin").write_bytes(b"\0" * 8)
        assert not holds_encrypted(folder)
        write_encrypted(folder / "b.bin", b"secret", load_key(key))
        assert holds_encrypted(folder)


def test_warn_unused_key_says_why_in_one_line(tmp_path: Path, key: Path, capsys: pytest.CaptureFixture) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "shard-0.bin").write_bytes(b"\0" * 64)
    line = warn_unused_key(key, [plain, None])
    assert capsys.readouterr().err == line + "\n"
    assert line == f"hwlm: warning: --key-file {key} is unused: {plain} is not encrypted (the key only opens " \
                   "encrypted files)"
    # A command that writes: the key would have encrypted its output with --encrypt.
    line = warn_unused_key(key, [plain], encrypt=False)
    assert line.endswith(f"{plain} is not encrypted, and without --encrypt nothing is written encrypted: add "
                         "--encrypt to encrypt the output")
    capsys.readouterr()


def test_warn_unused_key_is_silent_when_the_key_is_used(tmp_path: Path, key: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    plain, enc = tmp_path / "plain", tmp_path / "enc"
    plain.mkdir()
    enc.mkdir()
    write_encrypted(enc / "shard-0.bin.enc", b"tokens", load_key(key))
    assert warn_unused_key(None, [plain]) is None              # no key given
    assert warn_unused_key(key, [plain, enc]) is None           # the key opens one of the inputs
    assert warn_unused_key(key, [plain], encrypt=True) is None  # the key encrypts the output
    assert warn_unused_key(key, [tmp_path / "missing"]) is None  # the command's own error will say it
    assert warn_unused_key(key, [None]) is None                 # nothing known about the input
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- the commands


@pytest.mark.parametrize("argv", [
    ["eval", "--run", "{run}", "--device", "cpu"],
    ["generate", "--run", "{run}", "--prompt", "a", "--max-new-tokens", "2", "--temperature", "0", "--device", "cpu"],
    ["export", "--run", "{run}", "--out", "{tmp}/hf"],
    ["bench", "infer", "--run", "{run}", "--device", "cpu", "--energy", "off", "--batch-sizes", "1",
     "--prompt-lens", "4", "--new-tokens", "2", "--repeats", "1", "--out", "{tmp}/infer.json"],
], ids=lambda a: " ".join(a[:2]) if a[0] == "bench" else a[0])
def test_a_reading_command_warns_once_and_runs(argv: list[str], tiny_run: Path, key: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    args = [a.format(run=tiny_run, tmp=tmp_path) for a in argv]
    assert main([*args, "--key-file", str(key)]) == 0
    warned = _warnings(capsys.readouterr().err)
    assert len(warned) == 1 and warned[0].endswith("not encrypted (the key only opens encrypted files)"), warned
    if argv[0] == "eval":  # the data the run trained on is read too, and named
        from hwlm.cli.train import run_data

        assert f"{tiny_run} and {run_data(tiny_run)} are not encrypted" in warned[0]
    else:
        assert f"{tiny_run} is not encrypted" in warned[0]


def test_plan_train_data_warns(tmp_path: Path, key: Path, capsys: pytest.CaptureFixture) -> None:
    from classify_tiny import rows, write_jsonl

    write_jsonl(tmp_path / "rows.jsonl", rows(120))
    assert main(["prepare", "--task", "classify", str(tmp_path / "rows.jsonl"), "--vocab-size", "300",
                 "--out", str(tmp_path / "cls")]) == 0
    capsys.readouterr()
    assert main(["plan", "train", "--config", "lstm-sentences", "--hardware", "h100-sxm", "--data",
                 str(tmp_path / "cls"), "--key-file", str(key)]) == 0
    warned = _warnings(capsys.readouterr().err)
    assert len(warned) == 1 and f"{tmp_path / 'cls'} is not encrypted" in warned[0]


def test_train_without_encrypt_says_the_key_encrypts_nothing(tiny_data: Path, key: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    base = ["train", "--data", str(tiny_data), "--model", "debug", "--max-steps", "1", "--batch-size", "2",
            "--eval-interval", "0", "--device", "cpu", "--no-progress", "--no-tensorboard", "--key-file", str(key)]
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    warned = _warnings(capsys.readouterr().err)
    assert len(warned) == 1 and "without --encrypt nothing is written encrypted" in warned[0], warned
    assert not holds_encrypted(tmp_path / "plain")
    # With --encrypt the key is used, and nothing is said; reading that run back with the key is silent too.
    assert main([*base, "--out", str(tmp_path / "enc"), "--encrypt"]) == 0
    assert _warnings(capsys.readouterr().err) == [] and holds_encrypted(tmp_path / "enc")
    assert main(["eval", "--run", str(tmp_path / "enc"), "--device", "cpu", "--key-file", str(key)]) == 0
    assert _warnings(capsys.readouterr().err) == []


def test_compress_of_a_plain_run_warns(tiny_run: Path, key: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    capsys.readouterr()
    assert main(["compress", "--run", str(run), "--method", "w8a16", "--out", str(tmp_path / "q"), "--no-table",
                 "--key-file", str(key)]) == 0
    warned = _warnings(capsys.readouterr().err)
    assert len(warned) == 1 and f"{run} and " in warned[0] and "are not encrypted" in warned[0], warned


def test_train_config_takes_the_key_as_before(tiny_data: Path, key: Path, tmp_path: Path) -> None:
    """The warning is the CLI's: the library's TrainConfig with a key and plain data still trains."""
    from hwlm.train import train

    train(tiny_cfg(tiny_data, tmp_path / "r", max_steps=1, key_file=key))
    assert not holds_encrypted(tmp_path / "r")
