"""Settings: ``CLAWWEB_*`` environment variables, parsed and validated once at start-up.

A bad value stops the process with one line naming the variable (``ConfigError``), instead of surfacing as a
traceback on the first request.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .state.lanes import DEFAULT_SHARES, LANES

PREFIX = "CLAWWEB_"


class ConfigError(ValueError):
    """A setting has a value clawweb cannot use; the message names the variable."""


def _url(raw: str) -> str:
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL such as http://127.0.0.1:11434")
    try:
        parts.port  # noqa: B018 - raises ValueError on a port like ":99999"
    except ValueError:
        raise ValueError("has an invalid port") from None
    return raw.strip().rstrip("/")


def split_urls(value: str) -> tuple[str, ...]:
    """``CLAWWEB_OLLAMA_URL`` as a list: one URL, or several separated by commas."""
    return tuple(url.strip() for url in value.split(",") if url.strip())


def redact_url(text: str) -> str:
    """A URL (or several, comma-separated) as it may be shown in logs, ``/readyz``, error messages and ``clawweb
    doctor``: credentials (``http://user:pass@host``) become ``http://***@host``.

    Everything between ``://`` and the last ``@`` before the next URL goes, so a password holding a comma or an
    unencoded ``/`` is hidden too (a path with an ``@`` in it would be over-hidden, which is harmless)."""
    parts = text.split("://")
    for index in range(1, len(parts)):
        _, at, rest = parts[index].rpartition("@")
        if at:
            parts[index] = "***@" + rest
    return "://".join(parts)


def _database_url(raw: str) -> str:
    """A PostgreSQL URL (``postgresql://`` or ``postgres://``) or ``sqlite:///path``; empty: ``CLAWWEB_DB``."""
    value = raw.strip()
    if value and not value.startswith(("postgresql://", "postgres://", "sqlite://")):
        raise ValueError("must be postgresql://user:password@host:5432/database (or sqlite:///path/to/file.db)")
    return value


def _urls(raw: str) -> str:
    """One Ollama URL, or several separated by commas (``clawweb.upstream.hosts`` spreads requests over them). Kept as
    one normalized string, so code that only needs to name the upstream still can."""
    parts = split_urls(raw) or (raw,)
    urls = []
    for part in parts:
        try:
            urls.append(_url(part))
        except ValueError as exc:
            raise ValueError(f"{part}: {exc}" if len(parts) > 1 else str(exc)) from None
    if len(set(urls)) < len(urls):
        raise ValueError("names the same URL twice")
    return ",".join(urls)


def _redis_url(raw: str) -> str:
    if raw.strip() and urlsplit(raw.strip()).scheme not in ("redis", "rediss", "unix"):
        raise ValueError("must be a redis:// (or rediss://, unix://) URL such as redis://127.0.0.1:6379/0")
    return raw.strip()


def _bind(raw: str) -> str:
    raw = raw.strip()
    if raw.startswith("unix:"):
        return raw
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be HOST:PORT or unix:PATH")
    return raw


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.strip().lower() not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return raw.strip().lower()

    return parse


def _flag(raw: str) -> bool:
    if raw.strip().lower() not in ("0", "1", "true", "false", "yes", "no"):
        raise ValueError("must be 1 or 0")
    return raw.strip().lower() in ("1", "true", "yes")


def _names(raw: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in raw.split(",") if name.strip())


def _lane_shares(raw: str) -> tuple[tuple[str, float], ...]:
    """``interactive=0.75,api=0.75,batch=0.5``: a fraction of the slots per lane; a lane left out keeps its
    default."""
    shares = dict(DEFAULT_SHARES)
    for part in _names(raw):
        lane, _, value = part.partition("=")
        lane = lane.strip().lower()
        if lane not in shares:
            raise ValueError(f"{lane!r}: the lanes are {', '.join(LANES)} (as lane=fraction, comma-separated)")
        try:
            share = float(value)
        except ValueError:
            raise ValueError(f"{part!r}: a fraction of the slots, such as {lane}=0.5") from None
        if not 0 < share <= 1:
            raise ValueError(f"{part!r}: the fraction must be more than 0 and at most 1")
        shares[lane] = share
    return tuple(shares.items())


def _host_names(raw: str) -> tuple[str, ...]:
    """Host names as the ``Host`` header carries them, lower-case, without a port (any port is accepted); a leading
    dot (``.example.com``) also accepts every subdomain."""
    names = []
    for name in _names(raw.lower()):
        name = "." + name[2:] if name.startswith("*.") else name
        if "://" in name or "/" in name:
            raise ValueError(f"{name}: a host name such as chat.example.com, not a URL")
        bare = name.lstrip(".").rstrip(".")
        if bare.startswith("[") and bare.endswith("]"):
            bare = bare[1:-1]
        try:
            names.append(str(ipaddress.ip_address(bare)))
            continue
        except ValueError:
            pass
        if not bare or not all(part and part.replace("-", "").isalnum() and part.isascii() for part in bare.split(".")):
            raise ValueError(f"{name}: not a host name (letters, digits, '-' and '.', no port)")
        names.append(("." if name.startswith(".") else "") + bare)
    return tuple(names)


def _secret(raw: str) -> str:
    if raw and len(raw) < 32:
        raise ValueError("must be at least 32 characters (python -c 'import secrets; print(secrets.token_hex(32))')")
    return raw


def is_loopback(bind: str) -> bool:
    """True for a TCP bind on 127.0.0.0/8, ::1 or localhost; a unix socket is what a proxy in front uses."""
    host = bind.rpartition(":")[0].strip("[]")
    if bind.startswith("unix:") or not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _text(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


def _number(kind: Callable[[str], float], allow_zero: bool, expected: str) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        try:
            value = kind(raw)
        except ValueError:
            raise ValueError(f"must be {expected}") from None
        if not (0 <= value < float("inf")) or (value == 0 and not allow_zero):  # NaN fails the first test too
            raise ValueError(f"must be {expected}")
        return value

    return parse


_positive_int = _number(int, False, "a positive integer")
_positive_float = _number(float, False, "a positive number")
_non_negative_int = _number(int, True, "0 or a positive integer")
_non_negative_float = _number(float, True, "0 or a positive number")


def _setting(default: Any, parse: Callable[[str], Any], help: str) -> Any:
    return dataclasses.field(default=default, metadata={"parse": parse, "help": help})


@dataclass(frozen=True)
class Settings:
    """Every knob of the gateway. The README's configuration table lists the same names and defaults."""

    ollama_url: str = _setting("http://127.0.0.1:11434", _urls, "Ollama base URL, or several separated by commas")
    bind: str = _setting("127.0.0.1:8080", _bind, "gunicorn listen address")
    default_model: str = _setting("qwen3:32b", _text, "model used when a request names none")
    heartbeat_s: float = _setting(15.0, _positive_float, "SSE comment when upstream was silent this long")
    connect_timeout_s: float = _setting(3.0, _positive_float, "TCP connect timeout towards Ollama")
    read_timeout_s: float = _setting(300.0, _positive_float, "longest upstream silence (model load included)")
    tags_ttl_s: float = _setting(10.0, _positive_float, "how long the /api/tags model list is cached")
    max_body_bytes: int = _setting(1 << 20, _positive_int, "largest request body (413 beyond)")
    max_messages: int = _setting(1000, _positive_int, "most messages in one chat request")
    max_chars: int = _setting(1_000_000, _positive_int, "most characters of message content per request")
    max_num_ctx: int = _setting(32768, _positive_int, "options.num_ctx is clamped to this")
    upstream_label: str = _setting("Ollama", _text, "what the upstream is called in logs")
    max_active: int = _setting(4, _positive_int, "generations streaming from Ollama at once")
    max_queue: int = _setting(256, _positive_int, "requests waiting for a slot (503 beyond)")
    max_active_per_client: int = _setting(3, _positive_int, "active-or-queued requests per client (429 beyond)")
    queue_timeout_s: float = _setting(300.0, _positive_float, "longest wait for a slot")
    db: str = _setting("var/clawweb.db", _text, "SQLite file for conversations (created on start)")
    generation_ttl_s: float = _setting(300.0, _positive_float, "finished answers stay resumable this long")
    cancel_without_readers_s: float = _setting(
        0.0, _non_negative_float, "stop an answer nobody reads for this long (0: always finish and store it)"
    )
    trusted_proxies: int = _setting(0, _non_negative_int, "reverse proxies in front whose X-Forwarded-* to trust")
    auth: str = _setting(
        "auto", _choice("auto", "required", "off"), "accounts: auto = required unless loopback bind and no proxy"
    )
    secret_key: str = _setting("", _secret, "signs session cookies (else read from, or created in, the key file)")
    secret_key_file: str = _setting("var/secret_key", _text, "where the generated session key is kept (mode 0600)")
    models: tuple[str, ...] = _setting((), _names, "comma-separated models users may ask for (empty: all)")
    rate_per_minute: int = _setting(30, _positive_int, "answers one user may start per minute (429 beyond)")
    login_attempts: int = _setting(5, _positive_int, "failed logins per user name in 15 min (5x per address)")
    log_content: bool = _setting(False, _flag, "1: log message text (never passwords or keys)")
    redis_url: str = _setting("", _redis_url, "Redis for state shared by workers and hosts (empty: in memory)")
    allowed_hosts: tuple[str, ...] = _setting(
        (), _host_names, "Host names served besides loopback and the bind address (.example.com: with subdomains)"
    )
    body_timeout_s: float = _setting(30.0, _positive_float, "longest a request body may take to arrive (408 beyond)")
    max_pending_per_address: int = _setting(
        512, _positive_int, "connections one address may keep waiting on its own request bytes (429 beyond)"
    )
    quota_conversations: int = _setting(
        10_000, _non_negative_int, "most conversations one user keeps (403 beyond; 0: no limit)"
    )
    quota_bytes: int = _setting(
        500_000_000, _non_negative_int, "most UTF-8 bytes one user stores in conversations (413 beyond; 0: no limit)"
    )
    quota_answers_per_day: int = _setting(
        2000, _non_negative_int, "answers one user may start per day, server time (429 beyond; 0: no limit)"
    )
    conversations_per_minute: int = _setting(
        20, _non_negative_int, "conversations one user may create per minute (429 beyond; 0: no limit)"
    )
    send_timeout_s: float = _setting(
        120.0, _non_negative_float, "cut a stream whose client accepted nothing this long (0: never)"
    )
    stream_buffer_bytes: int = _setting(
        8 << 20, _positive_int, "most of an answer one stream holds for a slow client before reading pauses"
    )
    checkpoint_s: float = _setting(
        1.0, _non_negative_float, "save a streaming answer's text this often, for a crash (0: only at its end)"
    )
    simulator: bool = _setting(
        False, _flag, "1: the upstream is the built-in Ollama simulator (canned answers); the chat page says so"
    )
    share: str = _setting(
        "users", _choice("users", "anyone", "off"), "who may open share links: users (logged in), anyone, off"
    )
    max_import_bytes: int = _setting(
        64 << 20, _positive_int, "largest file POST /api/import takes (ChatGPT's conversations.json; 413 beyond)"
    )
    import_timeout_s: float = _setting(
        600.0, _positive_float, "longest a full-size import body may take to arrive (smaller: their share; 408 beyond)"
    )
    max_embed_inputs: int = _setting(256, _positive_int, "most texts one embedding request may hold (/api/embed)")
    embed_rate_per_minute: int = _setting(
        600, _positive_int, "embedding and /api/show requests a user may send a minute (429 beyond; not answers')"
    )
    max_active_embed: int = _setting(
        4, _positive_int, "embedding requests at Ollama at once: slots of their own, beside the answers' ones"
    )
    lane_shares: tuple[tuple[str, float], ...] = _setting(
        DEFAULT_SHARES,
        _lane_shares,
        "the most of CLAWWEB_MAX_ACTIVE each lane (interactive, api, batch) holds while another lane waits",
    )
    affinity_slack: int = _setting(
        2, _non_negative_int, "streams more than the least busy host a conversation's host may have and keep it"
    )
    affinity_entries: int = _setting(
        10000, _non_negative_int, "answers remembered per worker for conversation affinity (0: affinity off)"
    )
    database_url: str = _setting(
        "", _database_url, "postgresql://user:password@host/db: PostgreSQL instead of CLAWWEB_DB (several hosts)"
    )
    db_pool_size: int = _setting(8, _positive_int, "PostgreSQL connections each worker keeps")
    db_pool_timeout_s: float = _setting(5.0, _positive_float, "longest wait for a free PostgreSQL connection (503)")

    @property
    def database(self) -> str:
        """Where the store is: ``CLAWWEB_DATABASE_URL``, else the SQLite file ``CLAWWEB_DB``."""
        return self.database_url or self.db

    @property
    def auth_required(self) -> bool:
        """By default, open mode only where nobody but this machine's users can connect: a loopback bind and no
        proxy in front. ``off`` with a proxy is for a proxy that authenticates users itself."""
        local = is_loopback(self.bind) and not self.trusted_proxies
        return self.auth == "required" or (self.auth == "auto" and not local)


def load_settings(environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None) -> Settings:
    """Build ``Settings`` from ``CLAWWEB_*`` variables, then ``overrides`` (field names, for tests)."""
    values: dict[str, Any] = {}
    overrides = overrides or {}
    for field in dataclasses.fields(Settings):
        name = PREFIX + field.name.upper()
        raw = overrides.get(field.name, environ.get(name))
        if raw is None:
            continue
        try:
            values[field.name] = field.metadata["parse"](str(raw))
        except ValueError as exc:
            # Redacted: a URL setting may carry a password, and this line goes to the terminal or the journal.
            raise ConfigError(redact_url(f"{name}={raw!s}: {exc}")) from None
    settings = Settings(**values)
    if settings.models and settings.default_model not in settings.models:
        raise ConfigError(f"CLAWWEB_MODELS must include CLAWWEB_DEFAULT_MODEL ({settings.default_model})")
    if settings.auth == "off" and not is_loopback(settings.bind):
        raise ConfigError(f"CLAWWEB_AUTH=off: open mode is only allowed on a loopback bind, not {settings.bind}")
    return settings


def data_path_problem(variable: str, path: str) -> str | None:
    """Why the data file ``path`` (``CLAWWEB_DB``) cannot be created and written, or None.

    SQLite writes beside the file too (``-wal``, ``-shm``), so its directory must be writable. gunicorn's master
    checks this before any worker starts, so a read-only data directory is one line naming the path and the fix
    instead of a traceback per worker and "Worker failed to boot".
    """
    if path == ":memory:":
        return None
    target = Path(path)
    existing = target.parent
    while not existing.exists():  # created on start: the nearest existing ancestor must allow it
        existing = existing.parent
    fix = f"make it writable for the user running clawweb, or set {variable} to a writable place"
    if not existing.is_dir():
        return f"{variable}={path}: {existing} is not a directory; set {variable} to a writable place"
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "a read-only file system" if os.statvfs(existing).f_flag & os.ST_RDONLY else "no write permission"
        return f"{variable}={path}: the directory {existing} is not writable ({why}); {fix}"
    if target.exists() and not os.access(target, os.R_OK | os.W_OK):
        return f"{variable}={path}: the file is not writable; {fix}"
    return None
