"""bench only: clawweb's gunicorn.conf.py plus, with ``CLAWWEB_BENCH_PROFILE=DIR``, bench/sampler.py in each
worker (``gunicorn -c bench/profiling.conf.py wsgi:app``; ``bench/run.py --profile DIR`` runs clawweb and the
naive relay so). The naive relay is started with this file too: with ``NAIVE_OLLAMA_URL`` set, only the sampler."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sampler  # noqa: E402  (bench/sampler.py)

if not os.environ.get("NAIVE_OLLAMA_URL"):
    _conf = Path(__file__).resolve().parent.parent / "gunicorn.conf.py"
    exec(compile(_conf.read_text(), str(_conf), "exec"))  # every setting and hook of the real config
_post_worker_init = globals().get("post_worker_init")


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    if _post_worker_init:
        _post_worker_init(worker)
    if os.environ.get("CLAWWEB_BENCH_PROFILE"):
        sampler.start(os.environ["CLAWWEB_BENCH_PROFILE"])
