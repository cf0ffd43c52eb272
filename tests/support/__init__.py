"""Helpers for the tests and the benchmark: real servers, the simulator process, an SSE reader, a foreign Ollama."""
