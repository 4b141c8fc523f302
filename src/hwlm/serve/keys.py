"""API keys: ``hwlm-<id>-<secret>``, stored only as a salted SHA-256 and looked up by id.

    key = add_key(Path("hwlm-keys.json"), "alice")   # the full key, shown once
    store = KeyStore(Path("hwlm-keys.json"))
    store.check("hwlm-3f2a9c1e-...")                 # -> KeyRecord, or None

The secret is 32 random bytes, so a fast salted hash is enough (no password stretching on every
request: nobody brute-forces 256 bits). The digest is compared with ``hmac.compare_digest``
(constant time). The file is re-read when it changes, so a revocation takes effect at the next request.
File: ``{"version": 1, "kind": "hwlm-api-keys", "keys": [{"id", "name", "salt", "sha256", "created",
"revoked"}]}``, written atomically with mode 0600.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwlm.errors import ConfigError
from hwlm.io import atomic_write_bytes

__all__ = ["KeyRecord", "KeyStore", "add_key", "list_keys", "revoke_key", "parse_key"]

_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_KEY = re.compile(r"^hwlm-([0-9a-f]{12})-([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class KeyRecord:
    id: str
    name: str
    salt: str
    sha256: str
    created: str
    revoked: str | None = None


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode("ascii")).hexdigest()


def parse_key(key: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    m = _KEY.match(key)
    return (m.group(1), m.group(2)) if m else None


def _read(path: Path) -> list[KeyRecord]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [KeyRecord(**k) for k in data["keys"]]
    except FileNotFoundError:
        raise ConfigError(f"API keys file {path} does not exist: create a key with `hwlm keys add NAME "
                          f"--file {path}` (or serve with --no-auth on loopback)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"API keys file {path} is unreadable or not an hwlm keys file ({type(exc).__name__}): "
                          f"recreate it with `hwlm keys add`") from None


def _write(path: Path, keys: list[KeyRecord]) -> None:
    doc = {"version": 1, "kind": "hwlm-api-keys", "keys": [k.__dict__ for k in keys]}
    atomic_write_bytes(path, (json.dumps(doc, indent=2) + "\n").encode())
    os.chmod(path, 0o600)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def add_key(path: Path, name: str) -> tuple[str, KeyRecord]:
    """Create a key named ``name``; returns (the full key, to print once; its stored record)."""
    if not _NAME.match(name):
        raise ConfigError(f"key name {name!r} must be 1-64 letters, digits or _.@-")
    keys = _read(path) if path.exists() else []
    if any(k.name == name and k.revoked is None for k in keys):
        raise ConfigError(f"a live key named {name!r} exists in {path}: revoke it first or pick another name")
    key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_hex(16)
    record = KeyRecord(id=key_id, name=name, salt=salt, sha256=_digest(salt, secret), created=_now())
    _write(path, keys + [record])
    return f"hwlm-{key_id}-{secret}", record


def list_keys(path: Path) -> list[KeyRecord]:
    return _read(path)


def revoke_key(path: Path, name_or_id: str) -> KeyRecord:
    """Mark the live key with this name or id revoked (kept in the file, so its id is never reused)."""
    keys = _read(path)
    for i, k in enumerate(keys):
        if k.revoked is None and name_or_id in (k.name, k.id):
            keys[i] = KeyRecord(**{**k.__dict__, "revoked": _now()})
            _write(path, keys)
            return keys[i]
    raise ConfigError(f"no live key named or with id {name_or_id!r} in {path}; see `hwlm keys list --file {path}`")


class KeyStore:
    """The server's view of the keys file, reloaded when its mtime or size changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: Any = None
        self._by_id: dict[str, KeyRecord] = {}
        self._reload()

    def _reload(self) -> None:
        try:
            st = self.path.stat()
        except OSError:
            self._by_id, self._stamp = {}, None  # a deleted file: fail closed, nobody gets in
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            try:
                self._by_id = {k.id: k for k in _read(self.path) if k.revoked is None}
            except ConfigError:
                self._by_id = {}
            self._stamp = stamp

    def check(self, key: str) -> KeyRecord | None:
        """The live record of ``key``, or None (unknown id, wrong secret, revoked, malformed)."""
        self._reload()
        parsed = parse_key(key)
        # An unknown id still costs one digest, so timing does not tell ids apart from secrets.
        record = self._by_id.get(parsed[0]) if parsed else None
        salt = record.salt if record else "00" * 16
        got = _digest(salt, parsed[1] if parsed else "")
        ok = hmac.compare_digest(got, record.sha256 if record else "0" * 64)
        return record if ok and record else None
