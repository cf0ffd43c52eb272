#!/usr/bin/env bash
# `make run`: serve clawweb on CLAWWEB_BIND (127.0.0.1:8080) in front of Ollama at CLAWWEB_OLLAMA_URL.
# When no Ollama answers there, start the built-in Ollama simulator instead, and say so loudly.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
url=${CLAWWEB_OLLAMA_URL:-http://127.0.0.1:11434}

# CLAWWEB_OLLAMA_URL may list several hosts (comma-separated): one that answers is enough.
if ! "$py" -c 'import sys, requests
for url in sys.argv[1].split(","):
    try:
        requests.get(url.strip().rstrip("/") + "/api/version", timeout=2).raise_for_status()
        sys.exit(0)
    except requests.RequestException:
        pass
sys.exit(1)' "$url" 2>/dev/null; then
    sim_port=${CLAWWEB_SIMULATOR_PORT:-11435}
    shown=$("$py" -c 'import sys; from clawweb.config import redact_url; print(redact_url(sys.argv[1]))' "$url")
    echo "clawweb: no Ollama answers at $shown: using the built-in Ollama SIMULATOR on 127.0.0.1:$sim_port" \
         "(canned answers, not a real model)" >&2
    "$py" -m clawweb.simulator --host 127.0.0.1 --port "$sim_port" &
    sim_pid=$!
    # Waited for, not only signalled: when make run returns, its port is free again.
    trap 'kill $sim_pid 2>/dev/null; wait $sim_pid 2>/dev/null' EXIT
    export CLAWWEB_OLLAMA_URL="http://127.0.0.1:$sim_port"
    export CLAWWEB_SIMULATOR=1  # the chat page shows a banner: these answers are canned
    export CLAWWEB_UPSTREAM_LABEL="Ollama simulator"
    for _ in $(seq 50); do
        "$py" -c 'import sys, requests; requests.get(sys.argv[1], timeout=1)' "$CLAWWEB_OLLAMA_URL" 2>/dev/null && break
        sleep 0.1
    done
fi
# Not exec: the EXIT trap above must stop the simulator after gunicorn. SIGTERM is passed on to gunicorn's
# master (its workers are its business), then we wait for it to finish its graceful shutdown.
.venv/bin/gunicorn -c gunicorn.conf.py wsgi:app &
gunicorn_pid=$!
trap 'kill -TERM "$gunicorn_pid" 2>/dev/null' TERM INT
wait "$gunicorn_pid" || wait "$gunicorn_pid"
