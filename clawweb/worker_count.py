"""How many gunicorn workers ``CLAWWEB_WORKERS`` asks for (read by gunicorn.conf.py, before any worker starts)."""

import os


class WorkerCountError(ValueError):
    """``CLAWWEB_WORKERS`` is not a count gunicorn can run with these settings; the message says why."""


def host_cores() -> int:
    """The cores this process may run on (a container's or a systemd ``CPUAffinity=`` share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_count(value: str, redis_url: str, cores: int) -> int:
    """``value`` as a worker count: a number, or ``auto``: one per core with Redis (the streams' relaying is
    CPU-bound in one process; the state they share lives in Redis), one without (state is per process, so a
    second worker would not see the first one's answers, queue or stop requests)."""
    value = value.strip().lower()
    if value == "auto":
        return max(1, cores) if redis_url else 1
    try:
        workers = int(value)
    except ValueError:
        raise WorkerCountError(f"CLAWWEB_WORKERS={value!r} is not a number of workers or 'auto'") from None
    if workers < 1:
        raise WorkerCountError(f"CLAWWEB_WORKERS={workers} must be at least 1 (or 'auto')")
    if workers > 1 and not redis_url:
        raise WorkerCountError(
            f"CLAWWEB_WORKERS={workers} needs CLAWWEB_REDIS_URL (shared state for resuming streams, stopping "
            "answers and the admission queue across workers); set it, or run one worker"
        )
    return workers
