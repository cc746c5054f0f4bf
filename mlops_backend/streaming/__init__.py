"""Relaying Ollama's answers as they arrive: SSE for our routes, Ollama's and OpenAI's framing passed on."""
