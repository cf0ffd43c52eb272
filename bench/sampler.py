"""A sampling profiler for a gevent worker, with nothing to install (bench only; bench/profiling.conf.py).

A native thread samples the main thread's Python stack (whichever greenlet runs) every millisecond and every two
seconds writes the counts as collapsed stacks (``frame;frame;frame count``, what flamegraph.pl and speedscope
read) to DIR/<pid>.folded. Samples whose innermost frame is the hub's ``run`` are the event loop waiting (idle).
"""

import os
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from gevent import monkey


def _sample(out: Path, main: int, sleep: Callable[[float], None], monotonic: Callable[[], float]) -> None:
    counts: Counter[str] = Counter()
    written = monotonic()
    while True:
        sleep(0.001)
        frame = sys._current_frames().get(main)
        stack = []
        while frame is not None:
            stack.append(f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_name}")
            frame = frame.f_back
        counts[";".join(reversed(stack))] += 1
        if monotonic() - written > 2:
            out.write_text("".join(f"{stack} {n}\n" for stack, n in counts.items()))
            written = monotonic()


def start(directory: str) -> None:
    """Sample this process's main thread into ``directory``/<pid>.folded from now on (call it in the worker, after
    gevent's monkey-patching)."""
    # The originals: gevent patched these into greenlet ids and greenlet sleeps.
    start_thread, ident = monkey.get_original("_thread", ["start_new_thread", "get_ident"])
    sleep, monotonic = monkey.get_original("time", ["sleep", "monotonic"])
    # The sampler runs only when it holds the GIL: a short switch interval lets it take the GIL from Python code
    # as often as from a blocking call, else the samples would lean towards system calls.
    sys.setswitchinterval(0.0002)
    Path(directory).mkdir(parents=True, exist_ok=True)
    start_thread(_sample, (Path(directory) / f"{os.getpid()}.folded", ident(), sleep, monotonic))
