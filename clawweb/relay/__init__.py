"""What every answer passes through, from the view's decision to the last byte sent.

- ``admit``: the admission step every generation passes (allow-list, model check, rate, daily answers, a slot).
- ``relay``: ``Relay``, what one admitted request holds (ticket, upstream stream, stats) and its event stream.
- ``upstream_stream``: one upstream ``/api/chat`` request read in its own greenlet.
- ``events``: the typed events the relay hands its consumers (tokens stay plain ``bytes``).
- ``responses``: the WSGI body, and the SSE, NDJSON and Ollama-native responses built from a relay.
- ``sse``: Server-Sent Events framing, pure.
"""
