"""The README's browser example, run verbatim in Debian's Chromium from another origin against the real gateway."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from tests.support import API_KEY, ROOT, wait_for_access_line

BROWSER_DIR = ROOT / "tests" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
TOKENS = ["Grüße", " aus", " Zürich", " 🌍", " 👩‍💻", " 日本語", " ✓"]
DELAY = 0.3  # between upstream chunks: about 2 s from the first text to the last
PROMPT = "Grüß dich 👋"
INSTALL = "run scripts/install-test-deps.sh (apt-get install chromium; npm ci --prefix tests/browser)"


def readme_example() -> str:
    """The ```js block under the README heading "Stream from a browser", as written there."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^#+ Stream from a browser[ \t]*\n(.*?)(?=^#|\Z)", text, re.M | re.S)
    assert section, "README.md has no 'Stream from a browser' heading"
    block = re.search(r"^```js[ \t]*\n(.*?)^```", section.group(1), re.M | re.S)
    assert block, "README.md has no ```js block under 'Stream from a browser'"
    assert "</script" not in block.group(1).lower()
    return block.group(1)


class PageServer:
    """A static page on its own loopback port: http://localhost:PORT/ is an origin of its own."""

    def __init__(self, html: bytes):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/":
                    return self.send_error(404)
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(html)))
                self.end_headers()
                self.wfile.write(html)

            def log_message(self, format, *args):  # noqa: A002 - signature fixed by the base class
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.origin = f"http://localhost:{self.port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def page_server():
    """Start page servers whose page holds the README example; all are stopped after the test."""
    html = ('<!doctype html><meta charset="utf-8"><title>stream check</title>\n<script>\n'
            f"{readme_example()}</script>\n").encode()
    started = []

    def start() -> PageServer:
        started.append(PageServer(html))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def run_node(script: str, job: dict) -> dict:
    """Run a tests/browser script on a job; fail (not skip) when Chromium, node or playwright-core is missing."""
    missing = [what for what, ok in [(str(CHROMIUM), CHROMIUM.is_file()), ("node", shutil.which("node")),
                                     ("tests/browser/node_modules/playwright-core",
                                      (BROWSER_DIR / "node_modules" / "playwright-core").is_dir())] if not ok]
    if missing:  # a failure, not a skip: CI installs them
        pytest.fail(f"missing {', '.join(missing)}: {INSTALL}", pytrace=False)
    done = subprocess.run(["node", script, json.dumps(job)], cwd=BROWSER_DIR, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, f"{script} exited with {done.returncode}:\n{done.stderr}"
    return json.loads(done.stdout.strip().split("\n")[-1])  # not splitlines(): U+2028 is no line end here


@pytest.fixture
def browser():
    """Run tests/browser/stream_check.mjs on a page."""
    def run(page_url: str, gateway) -> dict:
        return run_node("stream_check.mjs", {"pageUrl": page_url, "gatewayUrl": gateway.url, "apiKey": API_KEY,
                                             "prompt": PROMPT, "timeoutMs": 30000})

    return run


def access_log(gateway, *wanted: str) -> str:
    """The gateway's log, once it holds every `wanted` string (the gateway logs a request once its response ends) or after 2 s."""
    deadline = time.monotonic() + 2
    while not all(w in (log := gateway.log()) for w in wanted) and time.monotonic() < deadline:
        time.sleep(0.05)
    return log


def test_readme_example_streams_the_answer_in_order_as_it_is_made(start_gateway, double, page_server, browser):
    page = page_server()
    gateway = start_gateway(ALLOWED_ORIGINS=page.origin)
    double.script(tokens=TOKENS, delay=DELAY)
    result = browser(page.origin + "/", gateway)
    assert result["origin"] == page.origin != gateway.url
    assert "error" not in result, result
    assert result["texts"] == TOKENS, result  # every piece, in order, emoji and all
    final = result["final"]
    assert final["done"] is True and final["done_reason"] == "stop", final
    assert final["eval_count"] == len(TOKENS), final
    times = [ms / 1000 for ms in result["times"]]
    assert times[-1] - times[0] > (len(TOKENS) - 1) * DELAY * 0.8, times  # the first long before the last
    assert min(b - a for a, b in zip(times, times[1:])) > DELAY / 3, times  # one arrival per upstream chunk
    assert double.requests[-1]["body"]["prompt"] == PROMPT


def test_the_browser_asks_first_with_a_preflight(start_gateway, double, page_server, browser):
    page = page_server()
    gateway = start_gateway(ALLOWED_ORIGINS=page.origin)
    double.script(tokens=["ok"])
    result = browser(page.origin + "/", gateway)
    assert result.get("texts") == ["ok"], result
    log = access_log(gateway, 'access: OPTIONS /api/llm/stream', 'access: POST /api/llm/stream')
    # X-API-Key and a JSON Content-Type are not "simple" headers: Chromium sends OPTIONS before the POST.
    assert 'access: OPTIONS /api/llm/stream 200' in log, log
    assert log.index('access: OPTIONS /api/llm/stream') < log.index('access: POST /api/llm/stream 200'), log


def test_a_page_from_an_origin_not_allowed_gets_a_cors_error(start_gateway, double, page_server, browser):
    allowed, other = page_server(), page_server()
    gateway = start_gateway(ALLOWED_ORIGINS=allowed.origin)
    double.script(tokens=TOKENS)
    result = browser(other.origin + "/", gateway)
    assert result["origin"] == other.origin
    assert result["texts"] == [] and result["error"] == "TypeError: Failed to fetch", result
    log = access_log(gateway, 'access: OPTIONS /api/llm/stream')
    assert 'access: OPTIONS /api/llm/stream' in log, log
    # The preflight found no Access-Control-Allow-Origin for this page, so the POST was never sent. Had it
    # been, its line would follow the preflight's (a line is written when its response ends): wait for the
    # line of a request of ours sent after the browser is done before looking for what the log lacks.
    marker = requests.get(gateway.url + "/health", headers={"Connection": "close"}, timeout=10)
    wait_for_access_line(gateway, marker.headers["X-Request-ID"])
    log = gateway.log()
    assert 'access: POST /api/llm/stream' not in log, log
    assert not [r for r in double.requests if r["path"] == "/api/generate"]
