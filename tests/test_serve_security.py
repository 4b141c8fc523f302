"""Access control and audit of ``hwlm serve``: keys, 401, 429 then success, 413, TLS, tamper-evident log."""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi", reason="pip install 'hwlm[serve]'")
openai = pytest.importorskip("openai", reason="pip install openai")

from hwlm.cli import main  # noqa: E402
from hwlm.errors import ConfigError  # noqa: E402
from hwlm.serve.audit import AuditLog, verify_log  # noqa: E402
from hwlm.serve.config import ServeConfig  # noqa: E402
from hwlm.serve.keys import KeyStore, add_key, list_keys, revoke_key  # noqa: E402
from serve_helpers import MODEL, Server, start_server  # noqa: E402


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (cryptography), so the client can verify the server."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def server(serve_run: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("serve-sec")
    cert, key = _self_signed(folder)
    s = start_server(serve_run, folder, "--rate-window", "1", "--rate-requests", "3", "--max-request-bytes", "4000",
                     "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
                     verify=ssl.create_default_context(cafile=str(cert)))
    yield s
    s.stop()


def test_served_over_tls(server: Server) -> None:
    assert server.url.startswith("https://127.0.0.1:")
    assert server.client().models.list().data[0].id == MODEL
    with pytest.raises(httpx.ConnectError):  # an unknown certificate is refused: it really is TLS
        httpx.get(server.url + "/health")


def test_key_file_holds_only_salted_hashes_and_revocation_applies_at_once(server: Server, capsys) -> None:
    keys = server.folder / "keys.json"
    audit = ["--audit-log", str(server.folder / "audit.jsonl"), "--audit-key", str(server.folder / "audit.key")]
    assert main(["keys", "add", "bob", "--file", str(keys), *audit]) == 0
    printed = capsys.readouterr().out
    bob = printed.split()[-1]
    assert bob.startswith("hwlm-") and bob.count("-") >= 2
    stored = keys.read_text()
    assert bob not in stored and bob.split("-", 2)[2] not in stored
    assert keys.stat().st_mode & 0o077 == 0
    assert main(["keys", "list", "--file", str(keys)]) == 0
    listing = capsys.readouterr().out
    assert "bob" in listing and bob not in listing
    client = openai.OpenAI(base_url=server.base, api_key=bob, max_retries=0,
                           http_client=httpx.Client(verify=server.verify))
    assert client.models.list().data[0].id == MODEL
    assert main(["keys", "revoke", "bob", "--file", str(keys), *audit]) == 0
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    events = [json.loads(line)["event"] for line in (server.folder / "audit.jsonl").read_text().splitlines()]
    assert "key_add" in events and "key_revoke" in events


def test_wrong_and_missing_keys_are_401(server: Server) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": server.key},
                    {"Authorization": "Bearer " + server.key[:-1] + ("A" if server.key[-1] != "A" else "B")}):
        r = httpx.post(server.base + "/completions", json={"model": MODEL, "prompt": "x"}, headers=headers,
                       verify=server.verify)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_rate_limit_429_with_retry_after_then_success(server: Server) -> None:
    client = server.client()
    time.sleep(1.1)  # an empty window (the key's other tests ran just before)
    for _ in range(3):
        client.completions.create(model=MODEL, prompt="The", max_tokens=2)
    with pytest.raises(openai.RateLimitError) as exc:
        client.completions.create(model=MODEL, prompt="The", max_tokens=2)
    wait = int(exc.value.response.headers["Retry-After"])
    assert 1 <= wait <= 2 and exc.value.body["code"] == "rate_limit_exceeded"
    time.sleep(wait)
    assert client.completions.create(model=MODEL, prompt="The", max_tokens=2).choices[0].finish_reason


def test_request_size_limit_is_413(server: Server) -> None:
    time.sleep(1.1)
    r = httpx.post(server.base + "/completions", json={"model": MODEL, "prompt": "x" * 5000},
                   headers=server.headers(), verify=server.verify)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def _log(folder: Path, n: int) -> tuple[Path, Path]:
    log, key = folder / "audit.jsonl", folder / "secret" / "audit.key"
    key.parent.mkdir()
    audit = AuditLog(log, key)
    for i in range(n):
        audit.append({"event": "request", "route": "/v1/completions", "status": 200, "completion_tokens": i})
    return log, key


def test_audit_verify_names_the_edited_deleted_swapped_and_cut_record(tmp_path: Path) -> None:
    log, key = _log(tmp_path, 5)
    good = log.read_text().splitlines(keepends=True)
    assert verify_log(log, key).ok
    edited = good.copy()
    edited[2] = edited[2].replace('"status": 200', '"status": 500')
    deleted = good[:1] + good[2:]
    swapped = [good[0], good[2], good[1], *good[3:]]
    for lines, line in ((edited, 3), (deleted, 2), (swapped, 2)):
        log.write_text("".join(lines))
        result = verify_log(log, key)
        assert not result.ok and result.first_bad == line, result.message
    log.write_text("".join(good[:-1]))  # cut short: a valid chain, but the head knows there were 5
    result = verify_log(log, key)
    assert not result.ok and "cut short" in result.message and result.first_bad == 5
    log.write_text("".join(edited))
    r = subprocess.run([sys.executable, "-m", "hwlm", "audit", "verify", str(log), "--key", str(key)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "line 3" in r.stdout and "edited" in r.stdout


def test_audit_key_elsewhere_is_refused_and_world_readable_key_too(tmp_path: Path) -> None:
    log, key = _log(tmp_path, 2)
    other = tmp_path / "other.key"
    other.write_text("ab" * 32)
    other.chmod(0o600)
    assert not verify_log(log, other).ok  # a different key: the first record's MAC fails
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        verify_log(log, key)


def test_server_log_verifies_and_an_edit_of_it_is_caught(server: Server, tmp_path: Path) -> None:
    server.client().models.list()
    time.sleep(0.3)  # the record of that request is written once its answer went out
    copy = tmp_path / "copy.jsonl"
    shutil.copy(server.folder / "audit.jsonl", copy)
    lines = copy.read_text().splitlines(keepends=True)
    record = json.loads(lines[0])
    record["key"] = "mallory"
    lines[0] = json.dumps(record) + "\n"
    copy.write_text("".join(lines))
    result = verify_log(copy, server.folder / "audit.key")
    assert not result.ok and result.first_bad == 1


def test_key_store_rejects_malformed_unknown_and_revoked(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key, record = add_key(path, "carol")
    store = KeyStore(path)
    assert store.check(key).name == "carol"
    assert store.check("hwlm-" + record.id + "-" + "A" * 43) is None
    assert store.check("not-a-key") is None and store.check("") is None
    revoke_key(path, record.id)
    assert store.check(key) is None and list_keys(path)[0].revoked
    with pytest.raises(ConfigError, match="no live key"):
        revoke_key(path, "carol")


def test_bad_serve_input_is_one_line(server: Server, tmp_path: Path, capsys) -> None:
    with pytest.raises(ConfigError, match="--no-auth is refused"):
        ServeConfig(run=tmp_path, host="0.0.0.0", auth=False)
    port = server.url.rsplit(":", 1)[1]
    garbled = tmp_path / "garbled.json"
    garbled.write_text("{not json")
    cases = [(["--run", str(tmp_path / "missing")], "does not exist"),
             (["--run", str(tmp_path), "--api-keys", str(tmp_path / "none.json")], "hwlm keys add"),
             (["--run", str(tmp_path), "--port", port, "--no-auth"], "in use"),
             (["--run", str(tmp_path), "--api-keys", str(garbled)], "not an hwlm keys file")]
    for args, words in cases:  # through the CLI's one error handler, in-process (each fails before loading)
        assert main(["serve", *args]) == 1
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
