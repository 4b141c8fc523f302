"""`hwlm prepare` through hwlm.cli.main: summary, --json, recipe files, errors as one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hwlm.cli import main


def test_prepare_cli_summary_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.txt").write_text("alpha beta gamma " * 20)
    (tmp_path / "b.jsonl").write_text(json.dumps({"body": "δέλτα 中文 😀"}) + "\n")
    recipe = tmp_path / "r.toml"
    recipe.write_text('[prepare]\nvocab_size = 280\ntext_field = "body"\n')
    out = tmp_path / "out"
    assert main(["prepare", str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl"), "--out", str(out),
                 "--config", str(recipe)]) == 0
    text = capsys.readouterr().out
    assert "dtype uint16" in text and "train" in text and "MB/s" in text and "invalid UTF-8 bytes replaced: 0" in text
    assert json.loads((out / "manifest.json").read_text())["config"]["vocab_size"] == 280
    assert main(["prepare", str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl"), "--out", str(out),
                 "--config", str(recipe), "--vocab-size", "290", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["documents"] == {"train": 1, "val": 1} and d["dtype"] == "uint16"
    assert json.loads((out / "manifest.json").read_text())["config"]["vocab_size"] == 290


def test_prepare_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("hwlm: error: input ") and "does not exist" in err and "\n" not in err
    recipe = tmp_path / "r.toml"
    recipe.write_text("[prepare]\nvocab_sise = 300\n")
    assert main(["prepare", "--config", str(recipe)]) == 1
    assert "did you mean 'vocab_size'" in capsys.readouterr().err


def test_prepare_dev_null_says_it_is_not_a_regular_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare", "/dev/null", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("hwlm: error: input /dev/null exists but is not a regular file (a device, pipe or socket): "
                   "save the text to a file first, or give a folder or glob")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert main(["prepare", str(fifo), "--out", str(tmp_path / "o")]) == 1
    assert "pipe exists but is not a regular file" in capsys.readouterr().err
