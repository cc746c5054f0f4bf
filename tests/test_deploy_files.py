"""Dockerfile, compose file and packaging: no Docker engine runs here, so check their key properties."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib

import requests
import yaml

from mlops_backend import __version__
from tests.support import ROOT


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_dockerfile_is_slim_non_root_and_runs_gunicorn():
    text = dockerfile()
    final_stage = text[text.rindex("\nFROM "):]
    assert re.search(r"^FROM python:3\.\d+-slim\s*$", final_stage.strip().splitlines()[0].replace("\nFROM", "FROM"))
    user = re.search(r"^USER (\S+)", final_stage, re.M).group(1)
    assert user not in ("root", "0")
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", final_stage, re.M).group(1))
    assert cmd == ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
    for path in ("requirements.txt", "mlops_backend/", "wsgi.py", "gunicorn.conf.py"):
        assert path in text, path
    assert "redoc.standalone.js" in final_stage


def test_dockerfile_healthcheck_command_works_against_the_real_service(gateway):
    text = dockerfile()
    command = json.loads(re.search(r"HEALTHCHECK [^\n]*\\\n\s*CMD (\[.*\])", text).group(1))
    assert command[0] == "python" and "/health" in command[2]
    ok = subprocess.run([sys.executable, *command[1:]], env={"PORT": str(gateway.port)}, timeout=10)
    assert ok.returncode == 0
    down = subprocess.run([sys.executable, *command[1:]], env={"PORT": "9"}, capture_output=True, timeout=10)
    assert down.returncode != 0


def compose_file() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_wires_the_gateway_to_ollama():
    compose = compose_file()
    ollama, gateway = compose["services"]["ollama"], compose["services"]["gateway"]
    assert ollama["image"].startswith("ollama/ollama")
    volume = ollama["volumes"][0].split(":")
    assert volume[0] in compose["volumes"] and volume[1] == "/root/.ollama"
    assert "ports" not in ollama  # Ollama is reachable only through the gateway
    assert gateway["build"] == "."
    assert gateway["environment"]["OLLAMA_BASE_URL"] == "http://ollama:11434"
    assert "ollama" in gateway["depends_on"]
    assert "API_KEY" in gateway["environment"]
    # Limits shared by the workers through Redis; usage and keys on a volume.
    assert compose["services"]["redis"]["image"].startswith("redis:") and "redis" in gateway["depends_on"]
    assert gateway["environment"]["RATE_LIMIT_STORAGE"] == "redis://redis:6379/0"
    data = gateway["volumes"][0].split(":")
    assert data[0] in compose["volumes"] and data[1] == "/data"
    assert gateway["environment"]["DATABASE_URL"] == "sqlite:////data/usage.db"
    assert gateway["environment"]["API_KEYS_FILE"].startswith("/data/")


def test_compose_publishes_only_nginx_running_the_deploy_config():
    services = compose_file()["services"]
    published = {name for name, service in services.items() if service.get("ports") or service.get("expose")}
    assert published == {"nginx"}, published
    nginx = services["nginx"]
    assert nginx["image"].startswith("nginx:")
    # The host's port 8000 (the URLs the README gives) goes to the port deploy/nginx.conf listens on.
    listen = re.search(r"^\s*listen (\d+);", (ROOT / "deploy" / "nginx.conf").read_text(), re.M).group(1)
    assert nginx["ports"] == [f"8000:{listen}"]
    # deploy/nginx.conf itself, read-only, in place of the image's default site (no copy to drift from it).
    source, target, mode = nginx["volumes"][0].split(":")
    assert (ROOT / source).resolve() == ROOT / "deploy" / "nginx.conf"
    assert target == "/etc/nginx/conf.d/default.conf" and mode == "ro"


def test_compose_gateway_listens_only_on_nginx_loopback():
    services = compose_file()["services"]
    gateway = services["gateway"]
    assert "ports" not in gateway and "expose" not in gateway
    # In nginx's network namespace, bound to loopback: the upstream deploy/nginx.conf names, as written.
    assert gateway["network_mode"] == "service:nginx"
    text = dockerfile()
    final_stage = text[text.rindex("\nFROM "):].replace("\\\n", " ")
    image_env = dict(item.split("=", 1) for line in re.findall(r"^ENV (.*)$", final_stage, re.M)
                     for item in line.split())
    port = image_env["PORT"]
    assert gateway["environment"]["HOST"] == "127.0.0.1" and "PORT" not in gateway["environment"]
    upstream = re.findall(r"^\s*server (\S+);", (ROOT / "deploy" / "nginx.conf").read_text(), re.M)
    assert upstream == [f"127.0.0.1:{port}"]
    # gunicorn's default FORWARDED_ALLOW_IPS (127.0.0.1) is nginx's address here: leave it be.
    assert "FORWARDED_ALLOW_IPS" not in gateway["environment"]
    # The image's HEALTHCHECK asks 127.0.0.1 too, which a loopback bind still answers.
    assert "http://127.0.0.1:%s/health" in text
    # Started after nginx, and restarted with it: a gateway left in an old namespace has no network.
    assert gateway["depends_on"]["nginx"]["restart"] is True


def test_package_version_matches_and_install_gives_the_package(tmp_path):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == __version__
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(tmp_path / "site"), str(ROOT)], check=True, timeout=180,
                   cwd=tmp_path)
    installed = tmp_path / "site" / "mlops_backend"
    assert (installed / "__init__.py").exists() and (installed / "blueprints" / "llm.py").exists()
    out = subprocess.run([sys.executable, "-c", "import mlops_backend, sys; print(mlops_backend.__file__)"],
                         cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site")}, capture_output=True, text=True)
    assert out.stdout.startswith(str(installed))


def test_requirements_are_pinned():
    for name in ("requirements.txt", "requirements-dev.txt"):
        for line in (ROOT / name).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith(("#", "-r")):
                assert re.match(r"^[A-Za-z0-9._-]+==[\w.]+$", line), line
    assert requests  # the client library the design card names is importable
