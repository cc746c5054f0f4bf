"""The APIs the pass-through relays, each in its own framing: how a record ends, how a failure is told
mid-stream, where the token counts are.

- Ollama's own API: NDJSON; a failed stream ends with an `{"error": "..."}` line.
- OpenAI chat, completions, embeddings: SSE `data:` chunks then `data: [DONE]`; usage in `usage`.
- OpenAI Responses: typed SSE events (`event: response.output_text.delta`, ...); usage in the
  `response.completed` event's response; a failure is an `error` event.
- Anthropic Messages: typed SSE events (`message_start`, `content_block_delta`, `ping`,
  `message_delta`, `message_stop`); usage in `message_start` and `message_delta`; a failure is
  an `error` event, `{"type": "error", "error": {"type", "message"}}`.
"""

from __future__ import annotations

import json

from ..errors import anthropic_error_body
from ..upstream.client import OllamaError


class Dialect:
    """How one API frames its records and failures, and reports token counts."""

    #: What ends one record: the relay passes only whole records, so a stream cut mid-record still
    #: ends with a clean error record.
    boundary = b"\n"
    #: Bytes that mark a line worth parsing for token counts.
    marker = b'"usage":{'
    #: How lines reporting a failure start.
    error_starts: tuple = ()
    #: How the line that ends a complete stream starts: a stream whose body ends before one is cut short
    #: (Ollama's Anthropic and Responses writers just stop when a generation fails mid-way).
    final_starts: tuple = ()

    def is_final(self, line: bytes) -> bool:
        """Whether `line` ends a complete stream (its own error records included)."""
        return line.startswith(self.final_starts) or line.startswith(self.error_starts)

    def stream_error(self, error: OllamaError) -> bytes:
        """The one record that ends a failed stream."""
        raise NotImplementedError

    def counts(self, answer: dict) -> tuple[int | None, int | None]:
        """(prompt tokens, completion tokens) of a whole answer or of one streamed record."""
        raise NotImplementedError

    def parse_line(self, line: bytes):
        """The JSON of one streamed line (for SSE, of a `data:` line; None for others)."""
        return json.loads(line[len(b"data: "):]) if line.startswith(b"data: ") else None


class OllamaDialect(Dialect):
    marker = b'"done":true'
    error_starts = (b'{"error"',)

    def is_final(self, line):
        # A generation's last line has "done": true; pull, push and create end with "status": "success".
        return self.marker in line or b'"status":"success"' in line or line.startswith(self.error_starts)

    def stream_error(self, error):
        return json.dumps({"error": error.detail}).encode() + b"\n"

    def counts(self, answer):
        return answer.get("prompt_eval_count"), answer.get("eval_count")

    def parse_line(self, line):
        return json.loads(line)


class OpenAIDialect(Dialect):
    boundary = b"\n\n"
    error_starts = (b'data: {"error"',)
    final_starts = (b"data: [DONE]",)

    def stream_error(self, error):
        body = {"error": {"message": error.detail, "type": "api_error", "param": None, "code": error.kind}}
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    def counts(self, answer):
        usage = answer.get("usage") or {}
        return usage.get("prompt_tokens"), usage.get("completion_tokens")


def _sse(name: str, data: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + json.dumps(data).encode() + b"\n\n"


class ResponsesDialect(OpenAIDialect):
    error_starts = (b"event: error", b"event: response.failed")
    final_starts = (b"event: response.completed", b"event: response.incomplete")

    def stream_error(self, error):
        return _sse("error", {"type": "error", "code": error.kind, "message": error.detail, "param": None})

    def counts(self, answer):
        usage = answer.get("usage") or (answer.get("response") or {}).get("usage") or {}
        return usage.get("input_tokens"), usage.get("output_tokens")


class AnthropicDialect(Dialect):
    boundary = b"\n\n"
    error_starts = (b"event: error",)
    final_starts = (b"event: message_stop",)

    def stream_error(self, error):
        return _sse("error", anthropic_error_body(503 if error.kind == "busy" else 500, error.detail))

    def counts(self, answer):
        usage = answer.get("usage") or (answer.get("message") or {}).get("usage") or {}
        return usage.get("input_tokens"), usage.get("output_tokens")


OLLAMA = OllamaDialect()
OPENAI = OpenAIDialect()
RESPONSES = ResponsesDialect()
ANTHROPIC = AnthropicDialect()
