"""``hwlm crypt keygen|rotate``: encryption keys for data at rest (``hwlm keys`` is for API keys only).

    hwlm crypt keygen ~/.hwlm/data.key                       # 32 random bytes, mode 0600
    hwlm crypt rotate runs/data --old-key-file old.key --new-key-file new.key
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("crypt", help="make encryption keys and re-encrypt a folder under a new key")
    sub = p.add_subparsers(dest="crypt_command", metavar="ACTION", required=True)
    k = sub.add_parser("keygen", help="write a new random AES-256 key file (mode 0600)")
    k.add_argument("path", type=Path)
    k.set_defaults(func=run_keygen)
    r = sub.add_parser("rotate", help="re-encrypt every encrypted file of a folder under a new key, atomically")
    r.add_argument("folder", type=Path)
    r.add_argument("--old-key-file", type=Path, help="the current key (default: $HWLM_DATA_KEY)")
    r.add_argument("--new-key-file", type=Path, required=True, help="the new key (mode 0600)")
    r.set_defaults(func=run_rotate)


def run_keygen(args: argparse.Namespace) -> int:
    from hwlm.crypt import key_id, load_key, new_key_file

    new_key_file(args.path)
    print(f"wrote key {key_id(load_key(args.path)).hex()} to {args.path} (mode 0600)")
    return 0


def run_rotate(args: argparse.Namespace) -> int:
    from hwlm.crypt import key_id, load_key, rotate_dir

    old, new = load_key(args.old_key_file), load_key(args.new_key_file)
    n = rotate_dir(args.folder, old, new, note=lambda line: print(line, file=sys.stderr))
    print(f"{args.folder}: {n} files re-encrypted from key {key_id(old).hex()} to {key_id(new).hex()}")
    return 0
