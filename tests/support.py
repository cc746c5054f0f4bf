"""Test helpers: run the gateway under real gunicorn, and read SSE from real sockets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "test-key-0123456789abcdef0123456789"
AUTH = {"X-API-Key": API_KEY}
CONFIG_VARIABLES = ("OLLAMA_", "API_KEY", "AUTH_ENABLED", "HOST", "PORT", "DEBUG", "ALLOWED_ORIGINS", "DEFAULT_MODEL",
                    "MAX_BODY_BYTES", "LOG_", "SSE_", "STREAM_", "ALLOW_UNKNOWN", "WEB_CONCURRENCY", "GUNICORN_",
                    "RATE_LIMIT", "DATABASE_URL", "USAGE_", "METRICS_", "PROMETHEUS_", "MAX_", "EMBED_", "MLOPS_",
                    "AUTH_", "STREAMS_", "SLOT_", "FORWARDED_", "OPEN_UPSTREAM", "TOKENS_", "KEYS_STORE", "DOCUMENT_",
                    "CONVERSATION_", "RESPONSES_", "CACHE_", "OTEL_")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GatewayProcess:
    """The gateway as a gunicorn subprocess (gevent workers) on a free loopback port.

    It runs from an empty directory so a developer's own `.env` never leaks into a test.
    """

    def __init__(self, ollama_url: str, **env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._workdir = tempfile.TemporaryDirectory(prefix="gateway-")
        self._log = open(os.path.join(self._workdir.name, "gunicorn.log"), "w+b")
        base = {k: v for k, v in os.environ.items() if not k.startswith(CONFIG_VARIABLES)}
        self.env = {**base, "PYTHONPATH": str(ROOT), "HOST": "127.0.0.1", "PORT": str(self.port),
                    "OLLAMA_BASE_URL": ollama_url, "API_KEY": API_KEY, "WEB_CONCURRENCY": "1",
                    "SSE_HEARTBEAT_SECONDS": "0.5", "DEFAULT_MODEL": "llama3.2", "LOG_LEVEL": "info",
                    "GUNICORN_GRACEFUL_TIMEOUT": "10",
                    # Off unless a test sets it: many tests send missing or wrong keys to one gateway
                    # from one address, which the default (60 a minute) would answer with 429.
                    "AUTH_FAILURES_PER_MINUTE": "0",
                    **{k: str(v) for k, v in env.items() if v is not None}}
        # A variable given as None is left unset: the gateway's own default applies.
        for name in [k for k, v in env.items() if v is None]:
            self.env.pop(name, None)
        self.process = None

    @property
    def workdir(self) -> str:
        """The gunicorn's working directory (its default usage.db lives here)."""
        return self._workdir.name

    def start(self, timeout: float = 20.0) -> GatewayProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "wsgi:app"],
            cwd=self._workdir.name, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gunicorn did not answer within {timeout} s:\n{self.log()}")

    def worker_pids(self) -> list[int]:
        """Return the pids of gunicorn's workers (children of the master)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return [int(pid) for pid in children]

    def log(self) -> str:
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode if self.process else None
        self._log.close()
        self._workdir.cleanup()
        return code


def keys_file(tmp_path_factory, *entries: dict) -> str:
    """A keys file holding `entries` (from security.keys.make_entry), in a fresh temporary directory."""
    from mlops_backend.security.keys import write_entries

    path = tmp_path_factory.mktemp("keys") / "keys.toml"
    write_entries(str(path), list(entries))
    return str(path)


def seed_conversation(database_url: str, conversation_id: str, turns: int, words: int) -> None:
    """Write `turns` question-and-answer pairs of `words` words each straight into a conversation (a long
    history, quickly): "turn <n> word word ..."."""
    from mlops_backend.storage import database
    from mlops_backend.storage.tables import messages

    engine = database.create_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(messages.insert(), [
                {"conversation_id": conversation_id, "position": i, "role": "user" if i % 2 == 0 else "assistant",
                 "content": f"turn {i // 2} " + "word " * words, "interrupted": False, "created_at": time.time()}
                for i in range(2 * turns)])
    finally:
        engine.dispose()


def wait_for_access_line(gateway, request_id: str, timeout: float = 5.0) -> str:
    """Wait until the gateway's log holds the access line of request `request_id`, and return that line.

    The gateway writes a request's line when its response ends, so a check of what the log lacks
    must wait for the line of the request in question first, or it passes before anything was
    written. Reads both log formats: text (`... [<id>] mlops_backend.access: ...`) and JSON.
    """
    assert request_id, "no request id to wait for"
    text_mark = f"[{request_id}] mlops_backend.access: "
    deadline = time.monotonic() + timeout
    while True:
        for line in gateway.log().splitlines():
            if text_mark in line:
                return line
            if line.startswith("{") and request_id in line:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("logger") == "mlops_backend.access" and record.get("request_id") == request_id:
                    return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no access line for request {request_id} within {timeout} s:\n"
                                 f"{gateway.log()[-4000:]}")
        time.sleep(0.05)


def post_stream(gateway, body: dict, headers=None, timeout=30) -> requests.Response:
    """POST to /api/llm/stream and return the response unread (stream=True)."""
    return requests.post(gateway.url + "/api/llm/stream", json=body, headers={**AUTH, **(headers or {})},
                         stream=True, timeout=timeout)


def sse_items(response):
    """Yield (arrival time, kind, value) per SSE item as bytes arrive: ("data", obj) or ("comment", text)."""
    buffer = b""
    for piece in response.iter_content(chunk_size=None):
        now = time.monotonic()
        buffer += piece
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            for line in block.decode().split("\n"):
                if line.startswith("data: "):
                    yield now, "data", json.loads(line[6:])
                elif line.startswith(":"):
                    yield now, "comment", line[1:].strip()
                else:
                    raise AssertionError(f"not an SSE line: {line!r}")
    if buffer.strip():
        raise AssertionError(f"stream ended inside an event: {buffer!r}")


def sse_events(response) -> list[dict]:
    """Read the whole stream and return its data events in order."""
    return [value for _, kind, value in sse_items(response) if kind == "data"]
