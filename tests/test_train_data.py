"""The shared tiny corpus (tests/tiny.py) has both splits and the vocabulary it asks for."""

from __future__ import annotations

from pathlib import Path

from hwlm.data import load_manifest

from tiny import prepare_tiny


def test_tiny_data_has_both_splits(tmp_path: Path) -> None:
    manifest = load_manifest(prepare_tiny(tmp_path))
    assert manifest["vocab_size"] == 300
    assert manifest["splits"]["train"]["tokens"] > 1000
    assert manifest["splits"]["val"]["tokens"] > 100
