"""Session-scoped fixtures shared by every test module.

``tiny_data`` is a prepared folder (vocab 300, both splits) and ``tiny_run`` a 6-step debug run trained
on it, each built once per test session. Both are read-only for tests: a test that writes into a data
or run folder (resume, pruning, corruption) copies it first (``shutil.copytree``) or builds its own with
the helpers in ``tiny.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tiny import prepare_tiny, tiny_cfg


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_tiny(tmp_path_factory.mktemp("tiny-data"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    from hwlm.train import train

    out = tmp_path_factory.mktemp("tiny-run") / "run"
    train(tiny_cfg(tiny_data, out))
    return out


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """The debug preset at width 64, trained 60 steps (see compress_fixtures.py); read-only."""
    from compress_fixtures import build_small_run

    return build_small_run(tiny_data, tmp_path_factory.mktemp("small-run") / "run")


@pytest.fixture(scope="session")
def serve_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A debug run with a 2048-token context for the serving tests (see serve_helpers.make_serve_run)."""
    from serve_helpers import make_serve_run

    return make_serve_run(tmp_path_factory.mktemp("serve-run"))


@pytest.fixture(scope="session")
def serve_server(serve_run: Path, tmp_path_factory: pytest.TempPathFactory):
    """One `hwlm serve` subprocess (8 slots, a key, an audit log) shared by the serving tests."""
    from serve_helpers import start_server

    server = start_server(serve_run, tmp_path_factory.mktemp("serve-shared"), "--max-num-seqs", "8",
                          "--rate-requests", "0", "--rate-tokens", "0")  # per-key limits: test_serve_security
    yield server
    server.stop()
