"""gunicorn settings for clawweb: one gevent worker holds thousands of long-lived SSE streams.

Run with ``gunicorn -c gunicorn.conf.py wsgi:app``. The settings are validated here, in the master, so a bad
``CLAWWEB_*`` value stops start-up with one readable line instead of a worker boot-loop of tracebacks.
"""

import os
import sys
import tempfile

from clawweb import lifecycle
from clawweb.config import ConfigError, data_path_problem, load_settings
from clawweb.storage.engine import is_postgres, sqlite_path
from clawweb.worker_count import WorkerCountError, host_cores, worker_count

try:
    _settings = load_settings(os.environ)
except ConfigError as exc:
    sys.exit(f"clawweb: {exc}")
# A read-only data directory: one line here, rather than every worker failing to boot with a traceback.
if not is_postgres(_settings.database):
    _problem = data_path_problem("CLAWWEB_DB", sqlite_path(_settings.database))
    if _problem:
        sys.exit(f"clawweb: {_problem}")

# Where to listen; nginx proxies to this (loopback by default: the gateway is not meant to face the internet bare).
bind = _settings.bind
# gevent: each stream is a greenlet waiting on sockets, so one process holds thousands of them. clawweb's subclass
# adds a bound on the connections one address keeps waiting on its own bytes (CLAWWEB_MAX_PENDING_PER_ADDRESS).
worker_class = "clawweb.worker.EdgeWorker"
# One worker holds thousands of streams, on one core. Several need Redis: generations, their event logs (for
# resuming on any worker), stop requests and the admission queue must be shared, else a reconnect to another worker
# loses all. "auto" (the deploy kit's): one per core with Redis, one without.
try:
    workers = worker_count(os.environ.get("CLAWWEB_WORKERS", "1"), _settings.redis_url, host_cores())
except WorkerCountError as exc:
    sys.exit(f"clawweb: {exc}")
if workers > 1:
    # Metrics from every worker: prometheus_client keeps per-process files here and /metrics sums them.
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="clawweb-metrics-"))
# Greenlets (so open streams) per worker; every open chat tab holds one.
worker_connections = int(os.environ.get("CLAWWEB_WORKER_CONNECTIONS", "4096"))
# For async workers this is only a liveness heartbeat of the event loop, not a request time limit.
timeout = 30
# On SIGTERM/SIGHUP streams end themselves within a second (see clawweb.lifecycle); this is the upper bound.
graceful_timeout = 20
# Idle keep-alive connections between requests. Short on purpose: a stopping worker waits for idle ones to
# time out before it exits (gunicorn does not close them), and nginx's upstream keepalive_timeout is below it.
keepalive = 5
# X-Forwarded-* are trusted in one place: ProxyFix in create_app, for exactly CLAWWEB_TRUSTED_PROXIES hops. gunicorn's
# own handling would take X-Forwarded-Proto (and -Ssl, -Protocol, and SCRIPT_NAME from a header) from any loopback
# peer by default, and from any peer at all on a unix socket, whatever that setting says: a local client could
# make a plain-HTTP request look like TLS. So gunicorn trusts no peer and knows no scheme header.
forwarded_allow_ips = ""
secure_scheme_headers: dict[str, str] = {}
forwarder_headers = ""
# No control socket: unused here, and several instances (tests, the benchmark) would share its default path.
control_socket_disable = True
# Never preload: the app must be created after gevent monkey-patches the worker.
preload_app = False
# Logs to stdout/stderr, where systemd's journal (or the terminal) picks them up.
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("CLAWWEB_LOG_LEVEL", "info")
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms "%(a)s"'
# The one logging config. clawweb's modules log as ``clawweb.<module>`` (getLogger(__name__)); here that tree
# goes where gunicorn's error log goes, in its format, at CLAWWEB_LOG_LEVEL. The rest is gunicorn's own default
# (access lines as they are formatted above; other libraries: warnings only).
_generic = {"format": "%(asctime)s [%(process)d] [%(levelname)s] %(message)s", "datefmt": "[%Y-%m-%d %H:%M:%S %z]"}
logconfig_dict = {
    "root": {"level": "WARNING", "handlers": ["error_console"]},
    "loggers": {
        "gunicorn.error": {"level": loglevel.upper(), "handlers": ["error_console"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["access_console"], "propagate": False},
        "clawweb": {"level": loglevel.upper(), "handlers": ["error_console"], "propagate": False},
    },
    "handlers": {
        "error_console": {"class": "logging.StreamHandler", "formatter": "generic", "stream": "ext://sys.stderr"},
        "access_console": {
            "class": "logging.StreamHandler",
            "formatter": "access",
            "stream": "ext://sys.stdout",
            "filters": ["share_tokens"],
        },
    },
    # A share link's token is a password in its URL (/s/<token>); the access log gets it as /s/REDACTED.
    "filters": {"share_tokens": {"()": "clawweb.logredact.ShareTokens"}},
    "formatters": {"generic": _generic, "access": {"format": "%(message)s"}},
}


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    """Let open streams notice that this worker is stopping, and end with a final frame."""
    lifecycle.watch(lambda: worker.alive)


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    """Close the database while the worker's event loop still runs: PostgreSQL's pool, left to the interpreter's
    exit, stops its greenlets after gevent's hub is gone (a traceback in the log)."""
    from clawweb.services import services

    app = worker.app.callable  # the Flask app as loaded (worker.wsgi wraps it); None if it failed to load
    if app is not None:
        services(app).store.close()


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    """Drop a dead worker's live gauges from the multi-process metrics."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
