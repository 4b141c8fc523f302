"""Encryption at rest: AES-256-GCM files in 1 MiB chunks, read by range, and key rotation.

    key = load_key(Path("data.key"))                      # 32 bytes from a 0600 file (or $HWLM_DATA_KEY)
    write_encrypted(Path("shard.bin.enc"), data, key)     # atomic: temp file, then rename
    with EncryptedReader(Path("shard.bin.enc"), key) as r:
        window = r.read(offset, 4096)                     # decrypts only the chunks it touches
    rotate_dir(Path("runs/data"), old_key, new_key)       # every encrypted file under a new key, atomically

Where a folder of files is encrypted (a prepared data folder, a run's checkpoints), its plain JSON index
(``manifest.json``, ``COMPLETE``) records :func:`encryption_section` (scheme and key id, never the key)
and the sha256 of each file *as stored* (the ciphertext), so a damaged file is found without the key;
:func:`rotate_dir` rewrites those digests and key ids as it re-encrypts. Readers find their key with
:func:`key_for`: the one given, else ``$HWLM_DATA_KEY``, else one line naming ``--key-file``.

File layout (``hwlm-enc`` version 1)::

    header  magic "HWLMENC1" | version u8 | key id (8 B) | file id (16 random B) | chunk size u32 | length u64
    chunk i nonce (12 random B) | ciphertext | GCM tag (16 B), at header + i * (chunk size + 28)

Each chunk's associated data is the whole header (so the file id and key id) plus the chunk index and a
last-chunk flag: chunks cannot be reordered, swapped between files, or cut off at a chunk boundary without
the tag failing. The key id (a hash of the key) tells a wrong key apart from a damaged file: a mismatch is
:class:`WrongKeyError`, never a corrupt file to skip. The key never touches the data folder or a log.
Torch-free core module (``cryptography`` is the ``crypt`` extra).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import stat
import struct
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from hwlm.errors import ConfigError, DataError
from hwlm.io import LOCK_FILE, atomic_dir, atomic_write_bytes, folder_lock, resource_error, sha256_file

__all__ = ["load_key", "optional_key", "key_for", "encryption_section", "read_secret_file", "key_id", "write_encrypted",
           "encrypt_bytes", "EncryptedReader", "is_encrypted", "read_encrypted", "check_chunks", "rotate_dir",
           "WrongKeyError", "CHUNK", "SCHEME", "KEY_FILE_HELP", "holds_encrypted", "warn_unused_key"]

MAGIC, VERSION, CHUNK = b"HWLMENC1", 1, 1 << 20
SCHEME = "hwlm-enc-1 (AES-256-GCM, 1 MiB chunks)"
_HEADER = struct.Struct("<8sB8s16sIQ")  # magic, version, key id, file id, chunk size, plaintext length
_OVERHEAD = 12 + 16  # nonce + tag per chunk
ENV = "HWLM_DATA_KEY"
# The --key-file help of every command that reads encrypted data or runs (one wording, as key_for's message).
KEY_FILE_HELP = f"key file (mode 0600) of an encrypted data folder or run; unset: ${ENV}. The key is never logged"


class WrongKeyError(ConfigError):
    """The file was encrypted under another key (its key id differs)."""


def _aesgcm(key: bytes):
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        raise ConfigError("encryption needs cryptography: pip install 'hwlm[crypt]'") from None
    return AESGCM(key)


def key_id(key: bytes) -> bytes:
    """8 bytes naming a key without revealing it."""
    return hashlib.sha256(b"hwlm-key-id|" + key).digest()[:8]


def read_secret_file(path: Path, what: str, missing: str) -> str:
    """The text of a secret file (an encryption or audit key), refused unless only its owner can read it.

    ``what`` names it in messages ("key file", "audit key"); ``missing`` says what to do when it is absent.
    """
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist: {missing}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path} is unreadable ({type(exc).__name__}): check the path and rights") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{what} {path} is readable by others (mode {stat.S_IMODE(mode):o}): chmod 600 {path}")
    return text.strip()


def load_key(path: Path | None = None, env: str = ENV) -> bytes:
    """A 32-byte key (64 hex digits) from ``path`` (refused unless mode 0600) or the environment variable."""
    if path is None:
        text = os.environ.get(env)
        if not text:
            raise ConfigError(f"no encryption key: give --key-file FILE (mode 0600) or set ${env}")
        where = f"${env}"
    else:
        path = Path(path)  # a command-line string as well as a Path
        text = read_secret_file(path, "key file", f"make one with `hwlm crypt keygen {path}`")
        where = str(path)
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ConfigError(f"the key in {where} is not 64 hex digits (AES-256)")
    return key


def optional_key(path: Path | None) -> bytes | None:
    """The key in ``path`` when one is given (``--key-file``), else None: readers then fall back to
    ``$HWLM_DATA_KEY`` only if what they read is encrypted (:func:`key_for`)."""
    return None if path is None else load_key(Path(path))


def encryption_section(key: bytes) -> dict[str, str]:
    """What a manifest or COMPLETE file records about its encrypted files: the scheme and key id."""
    return {"scheme": SCHEME, "key_id": key_id(key).hex()}


def key_for(what: str, section: dict | None, key: bytes | None) -> bytes | None:
    """The key that opens ``what`` (a folder whose index holds ``section``), or None when it is plain.

    ``key`` is the one given; without it ``$HWLM_DATA_KEY`` is read, and without that it is one line naming
    the flag. A key whose id differs from the recorded one is :class:`WrongKeyError` before any file is read.
    """
    if not section:
        return None
    want = section.get("key_id", "?")
    if key is None:
        if not os.environ.get(ENV):
            raise ConfigError(f"{what} is encrypted (key id {want}): give --key-file FILE (mode 0600) or set ${ENV}")
        key = load_key(None)
    if key_id(key).hex() != want:
        raise WrongKeyError(f"{what} is encrypted under key id {want}, the key given is {key_id(key).hex()}: "
                            "wrong key; give the key it was written with (after `hwlm crypt rotate`: the new one)")
    return key


def new_key_file(path: Path) -> None:
    """Write a fresh random key to ``path`` with mode 0600 (refuses to overwrite)."""
    if path.exists():
        raise ConfigError(f"key file {path} exists: refusing to overwrite a key")
    atomic_write_bytes(path, (secrets.token_hex(32) + "\n").encode())
    os.chmod(path, 0o600)


def _aad(header: bytes, index: int, last: bool) -> bytes:
    return header + struct.pack("<QB", index, int(last))


def encrypt_bytes(data: bytes | bytearray | memoryview, key: bytes, chunk: int = CHUNK) -> bytearray:
    """The whole encrypted file for ``data``, built in one buffer (each chunk encrypted in place: on a
    machine where fresh memory is slow to fault in, copies, not AES, would dominate)."""
    aes = _aesgcm(key)
    src = memoryview(data).cast("B")
    header = _HEADER.pack(MAGIC, VERSION, key_id(key), secrets.token_bytes(16), chunk, len(src))
    n = max(1, -(-len(src) // chunk))
    out = bytearray(len(header) + n * _OVERHEAD + len(src))
    view = memoryview(out)
    view[:len(header)] = header
    pos = len(header)
    for i in range(n):
        piece = src[i * chunk:(i + 1) * chunk]
        nonce = secrets.token_bytes(12)  # fresh per chunk: a nonce is never reused under a key
        view[pos:pos + 12] = nonce
        aes.encrypt_into(nonce, piece, _aad(header, i, i == n - 1), view[pos + 12:pos + 12 + len(piece) + 16])
        pos += len(piece) + _OVERHEAD
    return out


def write_encrypted(path: Path, data: bytes, key: bytes, chunk: int = CHUNK) -> None:
    """Encrypt ``data`` into ``path`` atomically."""
    atomic_write_bytes(path, encrypt_bytes(data, key, chunk))


def is_encrypted(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


# The plain index an hwlm folder keeps of its files: a data folder's manifest.json, a checkpoint's COMPLETE.
_INDEXES = ("manifest.json", "COMPLETE")


def _index_says(folder: Path) -> bool | None:
    """Whether ``folder``'s own index records an encryption section (True) or none (False: plain); None when
    it has no readable hwlm index (a version and the files it lists, ``splits`` or ``files``)."""
    for name in _INDEXES:
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        if isinstance(data, dict) and "version" in data and ("splits" in data or "files" in data):
            return bool(data.get("encryption"))
    return None


def holds_encrypted(path: Path | str) -> bool:
    """Whether ``path`` is an encrypted file or a folder holding one anywhere below it (a data folder's
    shards, a run's checkpoints).

    A folder with an hwlm index is decided by it, without opening its files: the writers encrypt all of a
    folder's files under one key or none, and the readers decrypt by what the index records, so a plain
    index means the key opens nothing there (a data folder of any number of shards costs one small read).
    Elsewhere (a run's top level, a folder hwlm did not write) each file's first 8 bytes are read, and the
    walk stops at the first encrypted one."""
    path = Path(path)
    if not path.is_dir():
        return is_encrypted(path)
    for root, dirs, files in os.walk(path):
        says = _index_says(Path(root))
        if says:
            return True
        if says is False:
            dirs.clear()  # the index covers its folder and everything below it
            continue
        if any(is_encrypted(Path(root) / f) for f in files):
            return True
    return False


def warn_unused_key(key_file: Path | str | None, reads: Iterable[Path | str | None],
                    encrypt: bool | None = None) -> str | None:
    """Say in one line on stderr that ``--key-file`` is given but unused, and return the line (else None).

    A user who passes a key for plain data most likely expects encryption, so the key's silence is worth a
    line. It is unused when none of the folders or files the command reads (``reads``; None entries are
    skipped) is encrypted, and, for a command that writes (``encrypt`` is its ``--encrypt``; None where the
    command has no such flag), ``--encrypt`` is off: the key then encrypts nothing either. A path that does
    not exist is left to the command's own error, and with no path known nothing is said.

    >>> warn_unused_key(None, ["runs/data"]) is None   # no key given: nothing to say
    True
    """
    paths = [Path(p) for p in reads if p is not None]
    if key_file is None or encrypt or not paths or not all(p.exists() for p in paths) \
            or any(holds_encrypted(p) for p in paths):
        return None
    what = " and ".join(str(p) for p in paths)
    line = f"hwlm: warning: --key-file {key_file} is unused: {what} {'are' if len(paths) > 1 else 'is'} not encrypted"
    line += (", and without --encrypt nothing is written encrypted: add --encrypt to encrypt the output"
             if encrypt is False else " (the key only opens encrypted files)")
    print(line, file=sys.stderr)
    return line


class EncryptedReader:
    """Random-access reads of an encrypted file; each read decrypts only the chunks it overlaps.

    The last ``cache`` decrypted chunks are kept, so neighbouring small reads (training windows, a
    window that spans a chunk edge) decrypt a chunk once rather than once per read.
    """

    def __init__(self, path: Path, key: bytes, cache: int = 2) -> None:
        self.path = path
        self._cache: dict[int, bytes] = {}  # chunk index -> plaintext, oldest first
        self._cache_size = cache
        try:
            self._f = open(path, "rb")
        except OSError as exc:
            raise resource_error(exc, path) from exc
        self.header = self._f.read(_HEADER.size)
        if len(self.header) < _HEADER.size or self.header[:8] != MAGIC:
            self._f.close()
            raise DataError(f"{path} is not an hwlm encrypted file (no HWLMENC1 header)")
        _, version, kid, _, self.chunk, self.size = _HEADER.unpack(self.header)
        if version != VERSION:
            self._f.close()
            raise DataError(f"{path}: encrypted-file version {version}, this hwlm reads {VERSION}")
        if kid != key_id(key):
            self._f.close()
            raise WrongKeyError(f"{path} was encrypted under key id {kid.hex()}, the key given is "
                                f"{key_id(key).hex()}: wrong key")
        self.chunks = max(1, -(-self.size // self.chunk))
        expected = _HEADER.size + self.chunks * _OVERHEAD + self.size
        actual = os.fstat(self._f.fileno()).st_size
        if actual != expected:
            self._f.close()
            raise DataError(f"{path} holds {actual} bytes where its header promises {expected}: truncated or "
                            f"extended (chunk {min(self.chunks - 1, max(0, (actual - _HEADER.size) // (self.chunk + _OVERHEAD)))})")
        self._aes = _aesgcm(key)
        self._blob = bytearray(min(self.chunk, self.size) + _OVERHEAD)  # one chunk as stored, reused

    def _length(self, i: int) -> int:
        return min(self.chunk, self.size - i * self.chunk)

    def _decrypt_into(self, i: int, out: memoryview) -> None:
        """Authenticate chunk ``i`` and decrypt it into ``out`` (its plaintext length)."""
        from cryptography.exceptions import InvalidTag

        blob = memoryview(self._blob)[:self._length(i) + _OVERHEAD]
        self._f.seek(_HEADER.size + i * (self.chunk + _OVERHEAD))
        self._f.readinto(blob)
        try:
            self._aes.decrypt_into(blob[:12], blob[12:], _aad(self.header, i, i == self.chunks - 1), out)
        except InvalidTag:
            raise DataError(f"{self.path}: chunk {i} fails authentication (tampered, reordered or from another "
                            f"file); nothing of it is used") from None

    def _chunk(self, i: int) -> bytearray:
        out = bytearray(self._length(i))
        self._decrypt_into(i, memoryview(out))
        return out

    def _cached(self, i: int) -> bytearray:
        if i in self._cache:
            self._cache[i] = self._cache.pop(i)  # now the newest
            return self._cache[i]
        plain = self._chunk(i)
        if self._cache_size > 0:
            self._cache[i] = plain
            while len(self._cache) > self._cache_size:
                del self._cache[next(iter(self._cache))]
        return plain

    def read(self, offset: int = 0, n: int | None = None) -> bytes | bytearray:
        """Plaintext bytes ``[offset, offset + n)`` (all from ``offset`` when ``n`` is None)."""
        n = self.size - offset if n is None else n
        if offset < 0 or n < 0 or offset + n > self.size:
            raise DataError(f"{self.path}: read of {n} bytes at {offset} is outside its {self.size} bytes")
        if n == 0:
            return b""
        first, last = offset // self.chunk, (offset + n - 1) // self.chunk
        start = offset - first * self.chunk
        if last - first <= 1:  # a window: through the cache
            if first == last:
                return bytes(memoryview(self._cached(first))[start:start + n])
            return bytes(self._cached(first)[start:] + self._cached(last)[:start + n - self.chunk])
        # A long read (a whole file): every chunk straight into one buffer, bypassing the cache.
        out = bytearray(min(self.size, (last + 1) * self.chunk) - first * self.chunk)
        view = memoryview(out)
        for i in range(first, last + 1):
            at = (i - first) * self.chunk
            self._decrypt_into(i, view[at:at + self._length(i)])
        return out if start == 0 and n == len(out) else out[start:start + n]

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> EncryptedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_encrypted(path: Path, key: bytes) -> bytes:
    with EncryptedReader(path, key) as r:
        return r.read()


def check_chunks(path: Path, key: bytes) -> None:
    """Authenticate every chunk of ``path``; the first bad one raises DataError naming it."""
    with EncryptedReader(path, key, cache=0) as r:
        for i in range(r.chunks):
            r._chunk(i)


def _is_index(path: Path) -> bool:
    """A plain JSON file that may list digests and key ids of encrypted files (manifest, COMPLETE, ...)."""
    return path.name == "COMPLETE" or path.suffix == ".json"


def _repoint(obj: Any, swap: dict[str, str]) -> Any:
    """``obj`` with every string in ``swap`` (old digest or key id) replaced by its new value."""
    if isinstance(obj, dict):
        return {k: _repoint(v, swap) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_repoint(v, swap) for v in obj]
    return swap.get(obj, obj) if isinstance(obj, str) else obj


CORRUPT_PREFIX = "corrupt-step-"  # checkpoints that --resume auto set aside (hwlm.train.checkpoint.move_aside)


def _set_aside(rel: Path) -> Path | None:
    """The ``corrupt-step-*`` folder that ``rel`` (a path inside the folder being rotated) lies in, if any."""
    for i, part in enumerate(rel.parts):
        if part.startswith(CORRUPT_PREFIX):
            return Path(*rel.parts[:i + 1])
    return None


def rotate_dir(folder: Path, old_key: bytes, new_key: bytes, note: Callable[[str], None] | None = None) -> int:
    """Re-encrypt every encrypted file under ``folder`` with ``new_key``; other files are copied as they are.

    The new folder is built beside the old one and swapped in whole (``hwlm.io.atomic_dir``): a crash
    leaves the old folder under the old key or the new one under the new key, never a mix. Every file
    is verified under the old key first. The plain JSON indexes (``manifest.json``, ``progress.json``,
    checkpoints' ``COMPLETE``) get the new ciphertexts' sha256 and the new key id, so the folder verifies
    and opens under the new key. The folder's lock (:func:`hwlm.io.folder_lock`) is held throughout: a
    running ``hwlm prepare`` or ``hwlm train`` stops it with one line. Returns the files re-encrypted.

    A checkpoint that ``--resume auto`` set aside as corrupt (``corrupt-step-*``) may no longer decrypt:
    it is copied as it is (still under the old key, kept for a post-mortem) and ``note`` gets one line.
    """
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder")
    count, swap = 0, {key_id(old_key).hex(): key_id(new_key).hex()}
    with folder_lock(folder, what="hwlm crypt rotate"), atomic_dir(folder) as tmp:
        shutil.copymode(folder, tmp)
        indexes = []
        for src in sorted(folder.rglob("*")):
            dst = tmp / src.relative_to(folder)
            aside = _set_aside(src.relative_to(folder))
            if aside is not None:
                if aside == src.relative_to(folder):  # the folder itself: copied whole, once
                    shutil.copytree(src, dst, symlinks=True)
                    if note is not None:
                        note(f"note: {folder / aside} is a checkpoint set aside as corrupt: copied as it is, not "
                             "re-encrypted (still under the old key); delete it once it is no longer needed")
                continue
            if src.is_dir():
                dst.mkdir(parents=True, exist_ok=True)
                continue
            if src.name == LOCK_FILE:
                continue  # the lock stays with the folder being replaced
            dst.parent.mkdir(parents=True, exist_ok=True)
            if is_encrypted(src):
                with EncryptedReader(src, old_key, cache=0) as r:
                    blob = encrypt_bytes(r.read(), new_key, r.chunk)
                dst.write_bytes(blob)
                swap[sha256_file(src)] = hashlib.sha256(blob).hexdigest()
                count += 1
            else:
                shutil.copy2(src, dst)
                if _is_index(src):
                    indexes.append(dst)
        for dst in indexes:
            try:
                doc = json.loads(dst.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                continue  # not JSON after all: copied as it is
            new = _repoint(doc, swap)
            if new != doc:
                dst.write_text(json.dumps(new, indent=2) + "\n", encoding="utf-8")
    return count
