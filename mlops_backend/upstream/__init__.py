"""Talking to Ollama: the HTTP client, the NDJSON line splitter, model names. Plain Python, no Flask."""
