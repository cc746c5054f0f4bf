"""A real redis-server for the tests, so shared state (rate limits) is checked against Redis itself."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time

import redis

from tests.support import free_port

REDIS_SERVER = "/usr/bin/redis-server"  # Debian's package; scripts/install-test-deps.sh installs it


class RedisServer:
    """redis-server as a subprocess on a free loopback port, with no persistence.

    A real server, not a fake, because the point is to prove that several gunicorn workers
    share one limit. It keeps nothing on disk (no RDB, no AOF) and runs in its own temporary
    directory, so tests never touch a system Redis nor leave files behind.
    """

    def __init__(self):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._workdir = tempfile.TemporaryDirectory(prefix="redis-")
        self._log = open(os.path.join(self._workdir.name, "redis.log"), "w+b")
        self.process = None

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and return once it answers PING; raise with its output otherwise."""
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self._workdir.name, "--daemonize", "no"],
            cwd=self._workdir.name, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = self.log()
                self.stop()
                raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n{output}")
            try:
                with self.client() as client:
                    if client.ping():
                        return self
            except redis.RedisError:
                time.sleep(0.05)
        output = self.log()
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING within {timeout} s:\n{output}")

    def client(self) -> redis.Redis:
        """A new client for this server (close it, or use it in a `with` block)."""
        return redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=5)

    def flush(self) -> None:
        """Empty every database, so each test starts with no counters left by another."""
        with self.client() as client:
            client.flushall()

    def log(self) -> str:
        if self._log.closed:
            return ""
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self, timeout: float = 10.0) -> int | None:
        """Terminate the server (kill it if it hangs) and remove its directory; safe to call twice."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not self._log.closed:
            self._log.close()
        self._workdir.cleanup()
        return self.process.returncode if self.process else None
