"""A tamper-evident audit log: append-only JSON Lines, each record HMAC-SHA256-chained to the previous.

    log = AuditLog(Path("audit.jsonl"), Path("/etc/hwlm/audit.key"))
    log.append({"event": "request", "route": "/v1/completions", "status": 200, ...})
    verify_log(Path("audit.jsonl"), Path("/etc/hwlm/audit.key"))  # -> VerifyResult

Record ``n`` carries ``seq = n``, ``prev`` (record n-1's MAC, "" for the first) and
``mac = HMAC(key, canonical JSON of the record without mac)``. Editing a record breaks its MAC;
deleting or reordering records breaks ``seq``/``prev``. Cutting the log short leaves a valid
chain, so every append also rewrites a small head beside the key (``<key>.head``: record count
and last MAC, itself HMAC'd), which the verifier compares with the log's end. The key lives apart
from the log (mode 0600), so whoever can write the log cannot forge MACs.

Appends take an exclusive ``flock`` on the log and read the head inside it, so a running server and
``hwlm keys add`` can write the same log. The key is never written into the log.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwlm.crypt import read_secret_file
from hwlm.errors import ConfigError, DataError
from hwlm.io import atomic_write_bytes, resource_error

__all__ = ["AuditLog", "VerifyResult", "verify_log", "load_audit_key"]


def load_audit_key(path: Path, create: bool = False) -> bytes:
    """The 32-byte key in ``path`` (hex); created 0600 when ``create`` and absent; refused if others can read it."""
    if not path.exists() and create:
        atomic_write_bytes(path, (secrets.token_hex(32) + "\n").encode())
        os.chmod(path, 0o600)
    text = read_secret_file(path, "audit key", "give the key file the log was written with")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise ConfigError(f"audit key {path} is not a hex key of at least 16 bytes: delete it to make a new one")
    return key


def _canon(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _mac(key: bytes, data: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def _head_path(key_path: Path) -> Path:
    return key_path.with_name(key_path.name + ".head")


def _head_mac(key: bytes, count: int, last: str) -> str:
    return _mac(key, f"hwlm-audit-head|{count}|{last}".encode())


def _read_head(key: bytes, key_path: Path) -> tuple[int, str] | None:
    """(count, last MAC) from the head file, or None when there is none yet; a forged head is an error."""
    path = _head_path(key_path)
    try:
        head = json.loads(path.read_text(encoding="utf-8"))
        count, last, mac = int(head["count"]), str(head["last_mac"]), str(head["mac"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"audit head {path} is unreadable or malformed: the log's end cannot be checked") from None
    if not hmac.compare_digest(mac, _head_mac(key, count, last)):
        raise DataError(f"audit head {path} has a bad MAC: it was edited or belongs to another key")
    return count, last


class AuditLog:
    """Appends chained records; one instance per process, safe across processes (flock)."""

    def __init__(self, path: Path, key_path: Path) -> None:
        self.path, self.key_path = path, key_path
        self.key = load_audit_key(key_path, create=True)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600))
        except OSError as exc:
            raise resource_error(exc, path) from exc
        head = _read_head(self.key, key_path)
        if head is None and path.stat().st_size > 0:
            raise DataError(f"audit log {path} has records but no head beside {key_path}: wrong --audit-key?")

    def append(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Add one record (``time`` is filled in); returns it with its seq, prev and mac."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            raise resource_error(exc, self.path) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            count, last = _read_head(self.key, self.key_path) or (0, "")
            record = {"seq": count, "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
                      + f".{int(time.time() * 1000) % 1000:03d}Z", **fields, "prev": last}
            record["mac"] = _mac(self.key, _canon(record))
            view = memoryview((json.dumps(record, ensure_ascii=False) + "\n").encode())
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            mac = record["mac"]
            head = {"count": count + 1, "last_mac": mac, "mac": _head_mac(self.key, count + 1, mac)}
            atomic_write_bytes(_head_path(self.key_path), (json.dumps(head) + "\n").encode())
            return record
        except OSError as exc:
            raise resource_error(exc, self.path) from exc
        finally:
            os.close(fd)  # releases the flock


@dataclass
class VerifyResult:
    ok: bool
    records: int
    message: str
    first_bad: int | None = None  # 1-based line number of the first bad record


def verify_log(path: Path, key_path: Path) -> VerifyResult:
    """Check every record's MAC, order and chain, then the head; names the first bad line."""
    key = load_audit_key(key_path)
    try:
        lines = path.read_bytes().split(b"\n")
    except FileNotFoundError:
        raise DataError(f"audit log {path} does not exist: check the path") from None
    except OSError as exc:
        raise resource_error(exc, path) from exc
    if lines and lines[-1] == b"":
        lines.pop()
    prev = ""
    for i, raw in enumerate(lines):
        line = i + 1
        try:
            record = json.loads(raw)
            mac = record.pop("mac")
        except (ValueError, KeyError, TypeError, AttributeError):
            return VerifyResult(False, i, f"line {line}: not a JSON audit record (edited or damaged)", line)
        if not hmac.compare_digest(str(mac), _mac(key, _canon(record))):
            return VerifyResult(False, i, f"line {line} (seq {record.get('seq')}): MAC mismatch, the record "
                                          f"was edited (or the key is wrong)", line)
        if record.get("seq") != i or record.get("prev") != prev:
            return VerifyResult(False, i, f"line {line}: holds record seq {record.get('seq')} where seq {i} belongs: "
                                          f"records before it were deleted or reordered", line)
        prev = mac
    head = _read_head(key, key_path)
    if head is not None and (head[0] != len(lines) or head[1] != prev):
        return VerifyResult(False, len(lines), f"the log ends after {len(lines)} records but its head says "
                                               f"{head[0]}: it was cut short (records {len(lines) + 1}.. are gone)",
                            len(lines) + 1)
    if head is None and lines:
        return VerifyResult(False, len(lines), f"no head file {_head_path(key_path)}: the log's end is unchecked", None)
    return VerifyResult(True, len(lines), f"{path}: {len(lines)} records, chain and head intact")
