"""``clawweb`` (``python -m clawweb``): the operator's command line.

``doctor`` and ``warmup`` talk to Ollama and the gateway; ``users`` and ``keys`` manage accounts, and
``conversations adopt`` gives open mode's conversations an owner, in the database named by ``CLAWWEB_DB`` or
``CLAWWEB_DATABASE_URL`` (run them as the service's user, with its environment file); ``backup`` and ``restore``
copy that database out and back (backups.py); ``db copy`` moves an installation to another database (SQLite
to PostgreSQL, or back) and ``db verify`` compares two.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import accounts, backups, quotas
from .chat import adopt
from .config import ConfigError, Settings, load_settings, redact_url
from .doctor import Doctor, warmup
from .doctor_state import database_checks, redis_checks
from .state.lanes import KEY_LANES
from .storage import StorageUnavailable, Store, open_store
from .storage.copy import CopyRefused, copy, locations_problem
from .storage.engine import is_postgres, open_database, sqlite_path
from .storage.pg_tools import ToolFailed
from .storage.verify import Verification, verify

# Plain text, not the docstring: --help prints it as it stands, and RST's ``markup`` would show.
DESCRIPTION = (
    "The operator's command line: check the setup, load the model, manage users, API keys and conversations, back "
    "up and restore the database."
)
EPILOG = (
    "From a checkout: .venv/bin/python -m clawweb (after make run or make test). Installed by deploy/install.sh: "
    "clawweb, with the service's settings. The database is the one named by CLAWWEB_DATABASE_URL, else CLAWWEB_DB."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clawweb", description=DESCRIPTION, epilog=EPILOG)
    commands = parser.add_subparsers(dest="command", required=True)
    doctor = commands.add_parser("doctor", help="check that answers really stream, and say what to fix")
    doctor.add_argument("--url", help="the gateway (or nginx in front of it) to test, e.g. https://chat.example.com")
    doctor.add_argument("--nginx-site", help="nginx site file to check for timeouts")
    doctor.add_argument("--ca", help="CA bundle for --url (a self-signed certificate)")
    doctor.add_argument("--key", default=os.environ.get("CLAWWEB_API_KEY"), help="API key for --url (accounts on)")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    warm = commands.add_parser("warmup", help="load the default model into Ollama")
    warm.add_argument("--wait", type=float, default=0, help="seconds to wait for Ollama to come up")

    users = commands.add_parser("users", help="local accounts").add_subparsers(dest="action", required=True)
    for action, text in (("add", "create a user"), ("passwd", "set a new password (ends the user's sessions)")):
        sub = users.add_parser(action, help=text)
        sub.add_argument("name")
        sub.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    for action, text in (("disable", "refuse logins and keys, end sessions"), ("enable", "allow again")):
        users.add_parser(action, help=text).add_argument("name")
    users.add_parser("list", help="every user")
    sessions = users.add_parser("sessions", help="a user's logins (browsers); --revoke ends them all at once")
    sessions.add_argument("name")
    sessions.add_argument("--revoke", action="store_true", help="log the user out everywhere")
    usage = users.add_parser("usage", help="what each user stores and answers today, against the quotas")
    usage.add_argument("name", nargs="?", help="one user (default: every user, and open mode's if any)")

    keys = commands.add_parser("keys", help="API keys for programs").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="a new key for a user, shown once")
    create.add_argument("user")
    create.add_argument("--name", default="", help="what the key is for")
    create.add_argument("--admin", action="store_true", help="may load and unload models (Ollama load requests)")
    create.add_argument(
        "--lane",
        choices=KEY_LANES,
        default="api",
        help="its requests' admission lane: api (default), or batch, served after the page and the api keys",
    )
    keys.add_parser("revoke", help="stop a key from working").add_argument("id", type=int)
    keys.add_parser("list", help="every key (never the key itself)")

    kept = commands.add_parser("conversations", help="stored conversations")
    adopt = kept.add_subparsers(dest="action", required=True).add_parser(
        "adopt", help="give the conversations made in open mode (no owner) to a user, who then sees them"
    )
    adopt.add_argument("--to", required=True, metavar="NAME", help="the user who gets them")
    adopt.add_argument("--id", action="append", dest="ids", metavar="ID", help="only this one (repeatable)")

    backup = commands.add_parser("backup", help="a consistent copy of the database, taken while the gateway runs")
    backup.add_argument(
        "dest", help="a new file, or a directory: a file clawweb-YYYYmmdd-HHMMSS.db (.pgdump on PostgreSQL) in it, UTC"
    )
    backup.add_argument(
        "--keep",
        type=_at_least_one,
        metavar="N",
        help="DEST is a directory (made if missing): keep the newest N of clawweb's backups there, remove older ones",
    )
    restore = commands.add_parser(
        "restore", help="replace the database with a backup (stop the gateway first, start it afterwards)"
    )
    restore.add_argument("src", help="a file made by clawweb backup")
    restore.add_argument("--force", action="store_true", help="even if the database holds conversations or users")

    db = commands.add_parser("db", help="move the installation to another database").add_subparsers(
        dest="action", required=True
    )
    moved = db.add_parser(
        "copy",
        help="copy every row, ids kept, into a new empty database, then verify it (stop the gateways first)",
        description="Copy every row (accounts, keys, sessions, conversations, shares, quotas) from one database into "
        "a new, empty one, in one transaction, then compare both: row counts and a checksum of every conversation. "
        "Exits 1 on any difference.",
    )
    compared = db.add_parser("verify", help="compare two databases: row counts and every conversation's checksum")
    for sub in (moved, compared):
        sub.add_argument("--from", dest="source", required=True, metavar="URL", help="sqlite:///path or a file")
        sub.add_argument("--to", dest="target", required=True, metavar="URL", help="postgresql://... (or sqlite:///)")
    moved.add_argument(
        "--force", action="store_true", help="copy answers still streaming in the source as they are (text so far)"
    )
    return parser


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Again: "):
        raise ValueError("the passwords differ")
    return first


def _user(store: Store, name: str) -> dict[str, Any]:
    user = store.user(name=name)
    if user is None:
        raise ValueError(f"no user '{name}'")
    return user


def _when(stamp: float | None) -> str:
    return "-" if stamp is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))


def _users(store: Store, settings: Settings, args: argparse.Namespace) -> None:
    if args.action == "add":
        name = accounts.check_name(args.name)
        if store.user(name=name) is not None:
            raise ValueError(f"user '{name}' exists; 'clawweb users passwd {name}' sets a new password")
        store.add_user(name, accounts.hash_password(_password(args.password_stdin)))
        print(f"added user {name}")
    elif args.action == "passwd":
        user = _user(store, args.name)
        accounts.set_password(store, user["id"], _password(args.password_stdin))
        print(f"new password for {args.name}; their sessions have ended")
    elif args.action in ("disable", "enable"):
        accounts.set_disabled(store, _user(store, args.name)["id"], args.action == "disable")
        print(f"{args.action}d {args.name}")
    elif args.action == "sessions":
        user = _user(store, args.name)
        if args.revoke:
            print(f"ended {store.end_sessions(user['id'])} session(s) of {args.name}")
            return
        for row in store.sessions(user["id"]):
            print(
                f"{row['id']:>5} since {_when(row['created_at'])}  last seen {_when(row['last_seen_at'])}  "
                f"{row['address'] or '-':<15} {row['user_agent'] or '-'}"
            )
    elif args.action == "usage":
        _usage(store, settings, args.name)
    else:
        for user in store.users():
            state = "disabled" if user["disabled"] else "active"
            print(f"{user['name']:<24} {state:<9} created {_when(user['created_at'])}")


def _usage(store: Store, settings: Settings, name: str | None) -> None:
    """One line per user: each figure against its quota (CLAWWEB_QUOTA_*, 0 = no limit)."""
    owners: list[tuple[str, int | None]] = [(user["name"], user["id"]) for user in store.users()]
    if name is not None:
        owners = [(name, _user(store, name)["id"])]
    day = quotas.today()
    rows = [(label, store.usage(owner, day)) for label, owner in owners]
    open_mode = store.usage(None, day)
    if name is None and any(open_mode.values()):
        rows.append(("(open mode)", open_mode))

    def of(value: int, limit: int) -> str:
        return f"{value} of {limit or 'no limit'}"

    print(f"{'user':<24} {'conversations':<22} {'bytes stored':<28} answers today ({day})")
    for label, figures in rows:
        print(
            f"{label:<24} {of(figures['conversations'], settings.quota_conversations):<22} "
            f"{of(figures['bytes'], settings.quota_bytes):<28} "
            f"{of(figures['answers_today'], settings.quota_answers_per_day)}"
        )


def _keys(store: Store, args: argparse.Namespace) -> None:
    if args.action == "create":
        key, row = accounts.create_key(store, _user(store, args.user)["id"], args.name, args.admin, args.lane)
        kind = ("admin key" if args.admin else "key") + (f" (lane {args.lane})" if args.lane != "api" else "")
        print(f"{kind} {row['id']} for {args.user} (shown only now; store it safely):\n{key}")
    elif args.action == "revoke":
        if not store.revoke_key(args.id):
            raise ValueError(f"no live key with id {args.id}")
        print(f"revoked key {args.id}")
    else:
        for entry in store.keys():
            state = "revoked " + _when(entry["revoked_at"]) if entry["revoked_at"] else "live"
            print(
                f"{entry['id']:>4} {entry['prefix']}… {entry['user_name']:<16} {entry['name'] or '-':<20} "
                f"created {_when(entry['created_at'])}  last used {_when(entry['last_used_at'])}  {state}"
                + f"  lane {entry['lane']}"
                + ("  admin" if entry["admin"] else "")
            )


def _conversations(store: Store, args: argparse.Namespace) -> None:
    user = _user(store, args.to)
    adopted, left = adopt.adopt(store, user["id"], args.ids)
    print(f"{user['name']} adopted {adopted} conversation(s)")
    if left:
        print(f"left {left} ownerless: {user['name']} has imported the same one(s) already")
    if args.ids and adopted + left < len(set(args.ids)):
        raise ValueError("some --id are not ownerless conversations (or do not exist)")


def _report(checked: Verification) -> int:
    rows = sum(checked.rows.values())
    print(f"verified {len(checked.rows)} tables, {rows} rows, {checked.conversations} conversations equal")
    for mismatch in checked.mismatches:
        print(f"MISMATCH {mismatch}")
    return 0 if checked.ok else 1


def _db(args: argparse.Namespace) -> int:
    problem = locations_problem(args.source, args.target) if args.action == "copy" else None
    if problem:
        raise ValueError(problem)
    source = open_database(args.source)  # both migrated to the current schema: the same tables and columns
    try:
        target = open_database(args.target)
        try:
            if args.action == "copy":
                try:
                    copied = copy(source, target, args.force, lambda table, rows: print(f"copied {table}: {rows}"))
                except CopyRefused as exc:
                    raise ValueError(f"nothing copied: {exc}") from exc
                if copied.streaming:
                    print(f"{copied.streaming} answer(s) were copied while streaming: their text so far")
            return _report(verify(source, target))
        finally:
            target.close()
    finally:
        source.close()


def _doctor(settings: Settings, args: argparse.Namespace) -> int:
    run = Doctor(settings.ollama_url, settings.default_model, settings.heartbeat_s, args.ca or True, args.key)
    run.ollama()
    database_checks(settings, run.check)
    redis_checks(settings, run.check)  # with Redis, also the shared admission queue
    if args.url:
        run.gateway(args.url)
    if args.nginx_site:
        run.proxy_timeouts(Path(args.nginx_site))
    ok = all(check.ok for check in run.checks)
    if args.json:
        print(json.dumps({"ok": ok, "checks": [asdict(check) for check in run.checks]}, indent=2))
    else:
        for check in run.checks:
            print(f"{'PASS' if check.ok else 'FAIL'}  {check.name}: {check.figure}")
            if check.fix:
                print(f"      fix: {check.fix}")
    return 0 if ok else 1


def _backup(settings: Settings, args: argparse.Namespace) -> None:
    where = settings.database
    if not is_postgres(where) and not os.path.exists(sqlite_path(where)):  # opening it would make an empty one
        raise backups.BackupError(f"there is no database at {sqlite_path(where)} (CLAWWEB_DB) to back up")
    db = open_database(where, 1, settings.db_pool_timeout_s)
    try:
        made, removed = backups.backup(db, args.dest, args.keep)
    finally:
        db.close()
    print(f"backed up {redact_url(where)} to {made}")
    for path in removed:
        print(f"removed {path} (older than the newest {args.keep})")


def _restore(settings: Settings, args: argparse.Namespace) -> None:
    held = backups.restore(args.src, settings.database, args.force)
    print(
        f"restored {args.src} into {redact_url(settings.database)}: {held['conversations']} conversation(s), "
        f"{held['users']} user(s); start the gateway again (systemctl start clawweb)"
    )


def main(argv: list[str] | None = None) -> int:
    # What the CLI creates (a new database, its -wal/-shm) holds password hashes: the service's user's alone,
    # whatever umask the operator's shell has. (The store creates its files 0600 itself; this covers the rest.)
    os.umask(0o077)
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(os.environ)
    except ConfigError as exc:
        print(f"clawweb: {exc}", file=sys.stderr)
        return 2
    if args.command == "warmup":
        return warmup(settings.ollama_url, settings.default_model, args.wait)
    if args.command == "doctor":
        return _doctor(settings, args)
    if args.command in ("backup", "restore"):
        try:
            if args.command == "backup":
                _backup(settings, args)
            else:
                _restore(settings, args)
        except (backups.BackupError, ToolFailed, StorageUnavailable, OSError) as exc:
            print(f"clawweb: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "db":
        try:
            return _db(args)
        except (ValueError, ConfigError, StorageUnavailable) as exc:
            print(f"clawweb: {exc}", file=sys.stderr)
            return 1
    # Never mark answers interrupted: the gateway may be running them right now.
    store = open_store(settings, mark_interrupted=False)
    try:
        if args.command == "users":
            _users(store, settings, args)
        elif args.command == "conversations":
            _conversations(store, args)
        else:
            _keys(store, args)
    except ValueError as exc:
        print(f"clawweb: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0
