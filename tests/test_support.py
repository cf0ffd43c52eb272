"""The gateways' log rule (tests/support/factories.py) catches what Python prints, and nothing gunicorn logs."""

from __future__ import annotations

import traceback
import warnings

import pytest

from .support.factories import log_problem

GUNICORN = """[2026-01-01 12:00:00 +0000] [41] [INFO] Starting gunicorn 23.0.0
[2026-01-01 12:00:00 +0000] [41] [WARNING] Worker with pid 42 was terminated due to signal 9
clawweb INFO answer end=done tokens=12 warning=none
"""


def test_a_clean_log_passes() -> None:
    assert log_problem(GUNICORN) is None


def test_a_traceback_is_caught_and_shown_from_its_start() -> None:
    missing: dict[str, int] = {}
    try:
        missing["key"]
    except KeyError:
        printed = traceback.format_exc()
    problem = log_problem(GUNICORN + printed)
    assert problem is not None and problem.startswith("Traceback (most recent call last):")
    assert "KeyError: 'key'" in problem


class MonkeyPatchWarning(RuntimeWarning):
    """Named as gevent's, the warning these logs used to be searched for by name."""


@pytest.mark.parametrize("category", [MonkeyPatchWarning, DeprecationWarning, ResourceWarning])
@pytest.mark.parametrize("path", ["/venv/gevent/monkey.py", "/a dir/module.py"])
def test_a_warning_as_python_prints_it_is_caught(category: type[Warning], path: str) -> None:
    printed = warnings.formatwarning(category("patched too late"), category, path, 7)
    assert printed.startswith(f"{path}:7: {category.__name__}: patched too late")
    problem = log_problem(GUNICORN + printed)
    assert problem is not None and problem.startswith(printed)


def test_a_long_traceback_is_cut_short() -> None:
    problem = log_problem("Traceback (most recent call last):\n" + "  frame\n" * 10_000)
    assert problem is not None and len(problem) <= 6_000
