"""PostgreSQL's own programs, ``pg_dump`` and ``pg_restore``, run for ``clawweb backup`` and ``clawweb restore``.

The password never goes on their command line, where every local user reads it in ``ps``: it is taken out of
the URL and given in the environment (``PGPASSWORD``); the rest of the URL is passed as a connection string.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..config import redact_url

# Debian keeps each installed version's programs here, off PATH (only pg_wrapper's links are on it).
DEBIAN_BIN = "/usr/lib/postgresql/*/bin"


class ToolFailed(Exception):
    """pg_dump or pg_restore is missing or failed; the message says which and why."""


def program(name: str) -> str:
    """``name`` (pg_dump, pg_restore) from PATH, else from the newest version in Debian's directories."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"{DEBIAN_BIN}/{name}"), key=_version)
    if versions:
        return versions[-1]
    raise ToolFailed(
        f"{name} is not installed (not on PATH, nor in {DEBIAN_BIN}): install PostgreSQL's client programs "
        f"(Debian: apt install postgresql-client), at least the server's major version"
    )


def _version(path: str) -> tuple[int, ...]:
    directory = path.split("/")[4]  # /usr/lib/postgresql/<version>/bin/...
    return tuple(int(part) for part in directory.split(".") if part.isdigit())


def connection(url: str) -> tuple[str, dict[str, str]]:
    """The connection string without the password, and the environment that carries the password."""
    params = conninfo_to_dict(url)
    password = params.pop("password", None)
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = str(password)
    return make_conninfo("", **params), env


def run(name: str, url: str, args: list[str]) -> None:
    """``name --dbname=<url without its password> args...``; its error output in ``ToolFailed`` if it fails."""
    conninfo, env = connection(url)
    argv = [program(name), "--no-password", f"--dbname={conninfo}", *args]  # --no-password: fail, never prompt
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        reason = done.stderr.strip() or f"exit status {done.returncode}"
        raise ToolFailed(f"{name} failed on {redact_url(url)}: {reason}")
