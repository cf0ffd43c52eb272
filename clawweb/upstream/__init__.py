"""The client towards Ollama: one pooled ``requests.Session`` per process, over one host or several.

With several hosts (``CLAWWEB_OLLAMA_URL=http://a:11434,http://b:11434``) the client still looks like one Ollama
to the rest of the gateway: a generation goes to the best host for its model (``hosts.rank``; a conversation's next
turn to the host that served the previous one while it is not much busier: ``affinity``) and moves on to the next
one if its host fails before the first token (``failover``); the model lists (``/api/tags``, ``/api/ps``) are
merged over the hosts that are up; anything else goes to the first host that answers. With one host every request
goes there, exactly as with a single URL.

- ``client``: ``OllamaClient``, the one object the rest of the gateway talks to (HTTP, the model check).
- ``failover``: trying the ranked hosts in turn, and which failure to report when every one failed.
- ``hosts``: what is known about each host and which one a request goes to; pure, fed facts by the client.
- ``affinity``: which host served a conversation's previous turn (its prompt cache), remembered per process.
- ``checker``: the background health check that keeps those facts fresh.
- ``gauges``: the per-host metrics, updated beside the pure state changes.
- ``errors``: the exceptions of a failed exchange with Ollama.
- ``wire``: facts about Ollama's answers (model names, model lists, error bodies).
"""
