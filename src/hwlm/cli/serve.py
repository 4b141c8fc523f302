"""``hwlm serve``, ``hwlm keys add|list|revoke`` and ``hwlm audit verify``: thin layers over hwlm.serve.

    hwlm keys add alice --file hwlm-keys.json                 # prints the key once
    hwlm serve --run runs/train --api-keys hwlm-keys.json --audit-log runs/audit.jsonl --audit-key ~/.hwlm/audit.key
    hwlm keys revoke alice --file hwlm-keys.json
    hwlm audit verify runs/audit.jsonl --key ~/.hwlm/audit.key
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hwlm.config import add_arguments, overrides_from_args, resolve
from hwlm.serve.config import ServeConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="serve a run over an OpenAI-compatible HTTP API",
        description="Serve a run (trained, compressed or distilled) at /v1/completions, /v1/chat/completions, "
                    "/v1/models, /metrics and a chat page at /, with continuous batching. Every route but "
                    "/health needs an API key (`hwlm keys add`).")
    p.add_argument("--config", metavar="RECIPE.toml", help="TOML file with a [serve] table")
    add_arguments(p, ServeConfig)
    p.set_defaults(func=run_serve)

    keys = subparsers.add_parser("keys", help="create, list and revoke API keys of `hwlm serve`")
    ksub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    for name, help_text, func in (("add", "create a key (printed once)", run_keys_add),
                                  ("list", "list keys (names and ids, never the keys)", run_keys_list),
                                  ("revoke", "revoke a key by name or id", run_keys_revoke)):
        k = ksub.add_parser(name, help=help_text)
        if name != "list":
            k.add_argument("name", help="key name" if name == "add" else "key name or id")
        k.add_argument("--file", type=Path, default=Path("hwlm-keys.json"), help="keys file (default: hwlm-keys.json)")
        k.add_argument("--audit-log", type=Path, help="also record the change in this audit log")
        k.add_argument("--audit-key", type=Path, help="the audit log's HMAC key file")
        k.add_argument("--json", action="store_true", help="print JSON")
        k.set_defaults(func=func)

    audit = subparsers.add_parser("audit", help="check an audit log of `hwlm serve`")
    asub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    v = asub.add_parser("verify", help="check every record's HMAC chain and the head; names the first bad record")
    v.add_argument("log", type=Path, help="the audit log (JSON Lines)")
    v.add_argument("--key", type=Path, required=True, help="the audit HMAC key file (its head file sits beside it)")
    v.set_defaults(func=run_audit_verify)


def run_serve(args: argparse.Namespace) -> int:
    from hwlm.serve import serve

    cfg = resolve(ServeConfig, args.config, overrides_from_args(args, ServeConfig), section="serve")
    from hwlm.crypt import warn_unused_key

    warn_unused_key(cfg.key_file, [cfg.run])
    serve(cfg, ready=lambda line: print(line, flush=True))
    return 0


def _audit(args: argparse.Namespace, event: str, record: object) -> None:
    if args.audit_log is None:
        return
    from hwlm.errors import ConfigError
    from hwlm.serve.audit import AuditLog

    if args.audit_key is None:
        raise ConfigError("--audit-log needs --audit-key FILE")
    AuditLog(args.audit_log, args.audit_key).append(
        {"event": event, "key": record.name, "key_id": record.id, "route": None, "status": None})  # type: ignore


def run_keys_add(args: argparse.Namespace) -> int:
    from hwlm.serve.keys import add_key

    key, record = add_key(args.file, args.name)
    _audit(args, "key_add", record)
    if args.json:
        print(json.dumps({"name": record.name, "id": record.id, "key": key}))
    else:
        print(f"API key for {record.name} (id {record.id}); shown once, store it now:\n{key}")
    return 0


def run_keys_list(args: argparse.Namespace) -> int:
    from hwlm.serve.keys import list_keys

    keys = list_keys(args.file)
    if args.json:
        print(json.dumps([{"name": k.name, "id": k.id, "created": k.created, "revoked": k.revoked} for k in keys]))
        return 0
    for k in keys:
        print(f"{k.name:24s} {k.id}  created {k.created}" + (f"  REVOKED {k.revoked}" if k.revoked else ""))
    return 0


def run_keys_revoke(args: argparse.Namespace) -> int:
    from hwlm.serve.keys import revoke_key

    record = revoke_key(args.file, args.name)
    _audit(args, "key_revoke", record)
    print(f"revoked {record.name} (id {record.id})")
    return 0


def run_audit_verify(args: argparse.Namespace) -> int:
    from hwlm.serve.audit import verify_log

    result = verify_log(args.log, args.key)
    print(result.message if result.ok else f"TAMPERED: {result.message}")
    return 0 if result.ok else 1
