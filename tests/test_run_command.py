"""The README's run command on a fresh checkout, and what the service says as it starts."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import requests

from tests.support import ROOT, free_port


def fresh_checkout(tmp_path):
    """Copy the tracked files (a clean clone, without .env), reusing the existing virtualenv."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (ROOT / name).is_file():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tmp_path / name)
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    return tmp_path


def test_serve_script_creates_a_key_and_runs_the_service(tmp_path, double):
    checkout = fresh_checkout(tmp_path)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("API_KEY", "PORT", "HOST", "OLLAMA_BASE_URL")}
    env.update(PORT=str(port), HOST="127.0.0.1", OLLAMA_BASE_URL=double.url, WEB_CONCURRENCY="1",
               GUNICORN_GRACEFUL_TIMEOUT="5")
    process = subprocess.Popen(["scripts/serve.sh"], cwd=checkout, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stdout.read().decode()
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
                    break
            except requests.RequestException:  # not listening yet, or the worker still importing the app
                time.sleep(0.5)
        dotenv = (checkout / ".env").read_text()
        key = next(line.split("=", 1)[1] for line in dotenv.splitlines() if line.startswith("API_KEY="))
        assert len(key) >= 32 and key != "your-secret-api-key-change-this"
        assert oct((checkout / ".env").stat().st_mode & 0o777) == "0o600"
        models = requests.get(f"http://127.0.0.1:{port}/api/llm/models", headers={"X-API-Key": key}, timeout=5)
        assert models.status_code == 200
        assert requests.get(f"http://127.0.0.1:{port}/redoc", timeout=5).text.count("redoc.standalone.js") == 1
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
    assert f"Created {checkout}/.env with a random API_KEY" in output
    assert key not in output  # it says where the key is, not what it is
    assert "MonkeyPatchWarning" not in output and "Traceback" not in output


def test_auth_disabled_warns_at_start(start_gateway):
    gw = start_gateway(AUTH_ENABLED="false", API_KEY="")
    assert requests.get(gw.url + "/api/llm/models").status_code == 200
    time.sleep(0.2)
    assert "AUTH_ENABLED=false" in gw.log() and "WARNING" in gw.log()
