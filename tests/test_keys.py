"""Named API keys: the file (hashes only), KeyRing, the `flask keys` command, and keys in force under gunicorn."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import tomli_w

from mlops_backend.security.keys import (SHARED_KEY_NAME, ApiKey, KeyFileError, KeyRing, digest, make_entry, new_token,
                                read_entries, write_entries)
from tests.support import API_KEY, CONFIG_VARIABLES, ROOT, GatewayProcess, sse_events, wait_for_access_line

PROBLEM = "application/problem+json"
UNUSED_OLLAMA = "http://127.0.0.1:9"  # the command never calls Ollama


# -- helpers ------------------------------------------------------------------------------------------------------


def wait_for(check, timeout: float = 3.0, interval: float = 0.05):
    """Call check() until it returns something truthy and return that; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            assert result, f"still false after {timeout} s"
            return result
        time.sleep(interval)


def headers_for(token: str | None, bearer: bool = False) -> dict:
    if token is None:
        return {}
    return {"Authorization": f"Bearer {token}"} if bearer else {"X-API-Key": token}


def call(gateway, token, method: str, path: str, body=None, bearer: bool = False) -> requests.Response:
    """One request to the gateway, read whole (SSE bodies too) and closed."""
    with requests.request(method, gateway.url + path, json=body, headers=headers_for(token, bearer),
                          timeout=30) as response:
        response.content  # noqa: B018 - read the body before the connection closes
    return response


def status_of(gateway, token, path: str = "/api/llm/models", bearer: bool = False) -> int | None:
    """The status of a GET, or None while the gateway does not answer (workers restarting)."""
    try:
        return call(gateway, token, "GET", path, bearer=bearer).status_code
    except requests.RequestException:
        return None


def model_names(gateway, token, path: str = "/api/llm/models") -> list[str]:
    response = call(gateway, token, "GET", path)
    assert response.status_code == 200, response.text
    return [model["name"] for model in response.json()["models"]]


def data_events(text: str) -> list[dict]:
    """The `data:` events of an SSE body read whole."""
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def assert_problem(response, status: int, *phrases: str) -> dict:
    """The response is an RFC 9457 problem with `status` whose detail holds every phrase."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith(PROBLEM)
    problem = response.json()
    assert problem["status"] == status
    for phrase in phrases:
        assert phrase in problem["detail"], problem
    return problem


def assert_log_names_key_not_token(gateway, responses, name: str, *tokens: str) -> None:
    """The access line of each response names the key (a line is written when its response closes: wait for
    each), and the log holds no key nor its hash."""
    assert responses
    for response in responses:
        line = wait_for_access_line(gateway, response.headers["X-Request-ID"])
        assert f" key={name} " in line, line
    log = gateway.log()
    for token in tokens:
        assert token not in log and digest(token) not in log


def entry(name: str, token: str | None = None, scopes=("use",), **options) -> dict:
    return make_entry(name, token or new_token(), scopes, **options)


def write_raw(path: Path, data) -> None:
    """Write `data` as the file's format without any checks (to build broken files)."""
    path.write_text(tomli_w.dumps(data) if path.suffix == ".toml" else json.dumps(data))


def stamp(path: Path) -> tuple:
    info = os.stat(path)
    return info.st_mtime_ns, info.st_size, info.st_ino


def rewrite_unnoticed(path: Path, old: str, new: str) -> None:
    """Swap one hash for another in place, keeping size, inode and mtime: the 1 s recheck cannot see it."""
    before, info = stamp(path), os.stat(path)
    data = path.read_bytes().replace(old.encode(), new.encode())
    with open(path, "r+b") as handle:
        handle.write(data)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert stamp(path) == before


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@dataclasses.dataclass
class KeysCommand:
    """`flask --app wsgi keys ...` as a subprocess, from an empty directory (no `.env`), with a clean environment."""

    keys_file: Path | None
    cwd: Path
    ollama_url: str = UNUSED_OLLAMA

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(CONFIG_VARIABLES + ("FLASK_",))}
        env.update(PYTHONPATH=str(ROOT), API_KEY=API_KEY, OLLAMA_BASE_URL=self.ollama_url, DATABASE_URL="sqlite://",
                   FLASK_SKIP_DOTENV="1")
        if self.keys_file is not None:
            env["API_KEYS_FILE"] = str(self.keys_file)
        return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "keys", *args], cwd=self.cwd, env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    def run_all(self, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
        """Run independent commands at once (each spends about a second starting Python and the app)."""
        with ThreadPoolExecutor(len(commands)) as pool:
            return list(pool.map(lambda args: self(*args), commands))

    def ok(self, *args: str) -> subprocess.CompletedProcess:
        result = self(*args)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        return result

    def fails(self, *args: str, result: subprocess.CompletedProcess | None = None) -> str:
        """Run a command that must fail cleanly (or check its `result`); return its error message."""
        result = result or self(*args)
        assert result.returncode != 0, result
        assert result.stdout == ""
        assert "Traceback" not in result.stderr, result.stderr
        return result.stderr

    def create(self, name: str, *options: str) -> str:
        """Create a key and return it: stdout is exactly one line, the key."""
        result = self.ok("create", name, *options)
        lines = result.stdout.splitlines()
        assert len(lines) == 1 and result.stdout == lines[0] + "\n", result.stdout
        assert lines[0].startswith("mlk_") and len(lines[0]) > 40
        assert f"Created {name!r}" in result.stderr
        return lines[0]


@pytest.fixture
def keys_cli(tmp_path) -> KeysCommand:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return KeysCommand(tmp_path / "keys.json", cwd)


# -- the file -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_the_file_holds_hashes_never_keys_and_round_trips(tmp_path, suffix):
    token = new_token()
    web = make_entry("web", token, ["admin", "use", "use"], models=["llama3.2"], requests_per_minute=5,
                     concurrent_streams=2)
    assert web["sha256"] == digest(token) == hashlib.sha256(token.encode()).hexdigest()
    assert web["scopes"] == ["use", "admin"]
    assert web["models"] == ["llama3.2"] and web["limits"] == {"requests_per_minute": 5, "concurrent_streams": 2}
    plain = entry("plain")
    assert set(plain) == {"name", "sha256", "scopes", "created"}
    path = tmp_path / f"keys{suffix}"

    write_entries(str(path), [web, plain])

    text = path.read_text()
    assert token not in text and token.removeprefix("mlk_") not in text
    assert digest(token) in text
    parsed = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
    assert parsed == {"keys": [web, plain]}
    assert read_entries(str(path)) == [web, plain]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [name for name in os.listdir(tmp_path)] == [path.name]  # no temporary file left behind


def test_new_tokens_are_prefixed_and_unique():
    tokens = {new_token() for _ in range(50)}
    assert len(tokens) == 50
    assert all(token.startswith("mlk_") and len(token) == 4 + 43 for token in tokens)


@pytest.mark.parametrize("name,text", [("absent.json", None), ("empty.json", ""), ("empty.toml", "")])
def test_a_missing_or_empty_file_holds_no_keys(tmp_path, name, text):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    assert read_entries(str(path)) == []
    assert KeyRing("", str(path)).names() == []


@pytest.mark.parametrize("name,text,phrase", [
    ("keys.json", "{not json", "not valid JSON"),
    ("keys.toml", "keys = [", "not valid TOML"),
    ("keys.json", '{"keys": {"name": "web"}}', 'expected an object with a list under "keys"'),
    ("keys.json", '["web"]', 'expected an object with a list under "keys"'),
])
def test_unreadable_files_are_refused(tmp_path, name, text, phrase):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(KeyFileError) as raised:
        read_entries(str(path))
    assert str(raised.value).startswith(f"{path}: ")
    assert phrase in str(raised.value)


BROKEN_ENTRIES = {
    "bad scope": ({"scopes": ["use", "root"]}, "scopes: unknown scopes ['root'] (known: use, admin, cloud)"),
    "no scope": ({"scopes": []}, "scopes: no scope given"),
    "cloud alone": ({"scopes": ["cloud"]}, "scopes: cloud adds to use or admin"),
    "bad sha256": ({"sha256": "ABC" * 21 + "D"}, "sha256 must be 64 lowercase hex digits"),
    "short sha256": ({"sha256": "0" * 63}, "sha256 must be 64 lowercase hex digits"),
    "unknown field": ({"token": "mlk_x"}, "unknown fields ['token']"),
    "negative limit": ({"limits": {"requests_per_minute": -1}}, "limits.requests_per_minute must be an integer >= 0"),
    "boolean limit": ({"limits": {"concurrent_streams": True}}, "limits.concurrent_streams must be an integer >= 0"),
    "unknown limit": ({"limits": {"tokens": 5}}, "limits may hold requests_per_minute and concurrent_streams"),
    "bad models": ({"models": "llama3.2"}, "models must be a list of model names"),
    "bad name": ({"name": "two words"}, "name must be 1-64 letters"),
}


@pytest.mark.parametrize("suffix", [".json", ".toml"])
@pytest.mark.parametrize("case", list(BROKEN_ENTRIES))
def test_broken_entries_are_refused_naming_the_file_the_entry_and_the_problem(tmp_path, suffix, case):
    change, phrase = BROKEN_ENTRIES[case]
    path = tmp_path / f"keys{suffix}"
    write_raw(path, {"keys": [entry("good"), {**entry("web"), **change}]})
    with pytest.raises(KeyFileError) as raised:
        read_entries(str(path))
    message = str(raised.value)
    assert message.startswith(f"{path}: keys[1]")
    assert phrase in message
    if case not in ("bad name", "unknown field"):  # both are checked before the name is known good
        assert "(web)" in message


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_duplicate_names_are_refused(tmp_path, suffix):
    path = tmp_path / f"keys{suffix}"
    write_raw(path, {"keys": [entry("web"), entry("other"), entry("web", scopes=["admin"])]})
    with pytest.raises(KeyFileError, match="the name 'web' appears twice") as raised:
        read_entries(str(path))
    assert str(raised.value).startswith(str(path))


def test_make_entry_refuses_what_the_file_would_refuse():
    with pytest.raises(KeyFileError, match="no scope given"):
        make_entry("web", new_token(), [])
    with pytest.raises(KeyFileError, match="cloud adds to use or admin"):
        make_entry("web", new_token(), ["cloud"])
    with pytest.raises(KeyFileError, match="name must be"):
        make_entry("-web", new_token(), ["use"])
    with pytest.raises(KeyFileError, match="must be an integer >= 0"):
        make_entry("web", new_token(), ["use"], requests_per_minute=-1)


# -- KeyRing ------------------------------------------------------------------------------------------------------


def test_identify_finds_named_keys_the_shared_key_and_nothing_else(tmp_path):
    web, ops = new_token(), new_token()
    path = tmp_path / "keys.json"
    write_entries(str(path), [entry("web", web, models=["llama3.2"], requests_per_minute=5, concurrent_streams=2),
                              entry("ops", ops, scopes=["admin"])])
    ring = KeyRing(API_KEY, str(path))

    assert ring.identify(web) == ApiKey("web", frozenset({"use"}), ("llama3.2",), 5, 2)
    assert ring.identify(web).has_scope("use") and not ring.identify(web).has_scope("admin")
    assert ring.identify(ops) == ApiKey("ops", frozenset({"admin"}))
    assert ring.identify(ops).has_scope("use")  # admin includes use
    shared = ring.identify(API_KEY)
    # The shared key has API_KEY_SCOPES (use and admin unless set); cloud is never given by default.
    assert shared == ApiKey(SHARED_KEY_NAME, frozenset({"use", "admin"})) and shared.name == "default"
    assert not shared.has_scope("cloud")
    assert shared.scopes == {"use", "admin"} and shared.models is None
    for wrong in ("wrong", web + "x", web[:-1], digest(web), API_KEY.upper(), ""):
        assert ring.identify(wrong) is None, wrong
    assert ring.names() == ["web", "ops"]


def test_without_a_shared_key_an_empty_token_is_nobody(tmp_path):
    ring = KeyRing("", str(tmp_path / "absent.json"))
    assert ring.identify("") is None and ring.identify("x") is None


def test_model_allow_lists_match_with_or_without_the_latest_tag():
    bare, tagged, everything = ApiKey("a", models=("llama3.2",)), ApiKey("b", models=("qwen3:latest",)), ApiKey("c")
    assert bare.allows_model("llama3.2") and bare.allows_model("llama3.2:latest")
    assert not bare.allows_model("llama3.2:1b") and not bare.allows_model("qwen3")
    assert tagged.allows_model("qwen3") and tagged.allows_model("qwen3:latest") and not tagged.allows_model("qwen3:8b")
    assert everything.allows_model("anything:at-all")


def test_the_file_is_reread_when_it_changes_and_a_broken_file_keeps_the_last_good_keys(tmp_path):
    web, ops, late = new_token(), new_token(), new_token()
    path = tmp_path / "keys.json"
    write_entries(str(path), [entry("web", web)])
    ring = KeyRing("", str(path))
    ring.RECHECK_SECONDS = 0.0
    errors = ListHandler()
    logging.getLogger("mlops_backend.security.keys").addHandler(errors)
    try:
        assert ring.identify(web).name == "web" and ring.identify(ops) is None

        write_entries(str(path), [entry("web", web), entry("ops", ops, scopes=["admin"])])
        assert ring.identify(ops).name == "ops"

        write_entries(str(path), [entry("ops", ops, scopes=["admin"])])  # web revoked
        assert ring.identify(web) is None and ring.names() == ["ops"]

        path.write_text('{"keys": [{"name": "ops"')
        assert ring.identify(ops).name == "ops" and ring.names() == ["ops"]
        assert ring.identify(ops).name == "ops"
        broken = [message for message in errors.messages if "not reloaded" in message]
        assert len(broken) == 1 and str(path) in broken[0]  # reported once, not on every request

        write_entries(str(path), [entry("late", late)])
        assert ring.identify(late).name == "late" and ring.identify(ops) is None

        path.unlink()
        assert ring.identify(late) is None and ring.names() == []
    finally:
        logging.getLogger("mlops_backend.security.keys").removeHandler(errors)


def test_the_file_is_checked_at_most_once_per_recheck_interval(tmp_path):
    token = new_token()
    path = tmp_path / "keys.json"
    ring = KeyRing("", str(path))
    ring.RECHECK_SECONDS = 60.0
    write_entries(str(path), [entry("web", token)])
    assert ring.identify(token) is None  # not looked at again yet
    ring.RECHECK_SECONDS = 0.0
    assert ring.identify(token).name == "web"


# -- the `flask keys` command -------------------------------------------------------------------------------------


def test_keys_command_creates_lists_and_revokes(keys_cli):
    path = keys_cli.keys_file
    token = keys_cli.create("web", "--scope", "use", "--model", "llama3.2", "--rpm", "5")

    [stored] = read_entries(str(path))
    assert stored["name"] == "web" and stored["sha256"] == digest(token)
    assert stored["scopes"] == ["use"] and stored["models"] == ["llama3.2"]
    assert stored["limits"] == {"requests_per_minute": 5}
    assert token not in path.read_text()

    ops = keys_cli.create("ops", "--scope", "admin", "--scope", "use", "--streams", "3")
    listing = keys_cli.ok("list")
    rows = [line.split("\t") for line in listing.stdout.splitlines()]
    assert [row[:5] for row in rows] == [["web", "use", "models=llama3.2", "rpm=5", "streams=default"],
                                         ["ops", "use,admin", "models=*", "rpm=default", "streams=3"]]
    assert [row[5] for row in rows] == [item["created"] for item in read_entries(str(path))]
    for secret in (token, ops, digest(token), digest(ops)):
        assert secret not in listing.stdout + listing.stderr

    before = path.read_bytes()
    refusals = {"a key named 'web' exists": ("create", "web", "--scope", "admin"),
                "name must be 1-64": ("create", "two words"), "'root' is not one of": ("create", "x", "--scope", "root")}
    for message, result in zip(refusals, keys_cli.run_all(*refusals.values())):
        assert message in keys_cli.fails(result=result)
    assert path.read_bytes() == before

    assert "Revoked 'web'" in keys_cli.ok("revoke", "web").stderr
    assert [item["name"] for item in read_entries(str(path))] == ["ops"]
    again, listing = keys_cli.run_all(("revoke", "web"), ("list",))
    assert "no key named 'web'" in keys_cli.fails(result=again)
    assert listing.returncode == 0 and [line.split("\t")[0] for line in listing.stdout.splitlines()] == ["ops"]


def test_keys_command_writes_toml_for_a_toml_file(keys_cli):
    toml = dataclasses.replace(keys_cli, keys_file=keys_cli.keys_file.with_suffix(".toml"))
    token = toml.create("web", "--scope", "admin")
    text = toml.keys_file.read_text()
    assert token not in text
    assert tomllib.loads(text)["keys"][0]["sha256"] == digest(token)


def test_keys_command_needs_api_keys_file_and_lists_a_missing_one_as_empty(keys_cli):
    unset = dataclasses.replace(keys_cli, keys_file=None)
    commands = [("create", "web"), ("list",), ("revoke", "web")]
    for result in unset.run_all(*commands):
        assert "API_KEYS_FILE is not set" in unset.fails(result=result)
    assert keys_cli.ok("list").stdout == "no keys\n"
    assert os.listdir(keys_cli.cwd) == [] and not keys_cli.keys_file.exists()


# -- keys in force under gunicorn ---------------------------------------------------------------------------------


def test_keys_created_and_revoked_with_the_command_apply_to_a_running_gateway(start_gateway, keys_cli, double):
    keys_cli.ollama_url = double.url
    gateway = start_gateway(API_KEYS_FILE=str(keys_cli.keys_file))  # no file yet: only the shared key
    assert status_of(gateway, API_KEY) == 200

    token = keys_cli.create("web", "--scope", "use")
    started = time.monotonic()
    wait_for(lambda: status_of(gateway, token) == 200)
    assert time.monotonic() - started < 2.5
    assert status_of(gateway, token, bearer=True) == 200
    answer = call(gateway, token, "POST", "/api/llm/generate", {"model": "llama3.2", "prompt": "hi"}, bearer=True)
    assert answer.status_code == 200 and answer.json()["done"] is True
    assert_log_names_key_not_token(gateway, [answer], "web", token)

    keys_cli.ok("revoke", "web")
    started = time.monotonic()
    wait_for(lambda: status_of(gateway, token) == 401)
    assert time.monotonic() - started < 2.5
    refused = call(gateway, token, "GET", "/api/llm/models", bearer=True)
    assert refused.status_code == 401
    assert status_of(gateway, API_KEY) == 200
    # The refused request's line is written when its response closes: wait for it before looking for the key.
    assert "GET /api/llm/models 401" in wait_for_access_line(gateway, refused.headers["X-Request-ID"])
    assert token not in gateway.log() and digest(token) not in gateway.log()


def test_sighup_makes_the_workers_read_the_keys_file_again(start_gateway, tmp_path):
    old, new = new_token(), new_token()
    path = tmp_path / "keys.json"
    write_entries(str(path), [entry("web", old)])
    # Our own metrics directory: gunicorn re-runs gunicorn.conf.py on SIGHUP.
    gateway = start_gateway(API_KEYS_FILE=str(path), PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"))
    assert status_of(gateway, old) == 200

    rewrite_unnoticed(path, digest(old), digest(new))
    time.sleep(KeyRing.RECHECK_SECONDS + 0.3)
    assert status_of(gateway, new) == 401 and status_of(gateway, old) == 200  # the recheck saw nothing

    workers = set(gateway.worker_pids())
    gateway.process.send_signal(signal.SIGHUP)
    wait_for(lambda: gateway.worker_pids() and not workers & set(gateway.worker_pids()), timeout=15)
    wait_for(lambda: status_of(gateway, new) == 200, timeout=15)
    assert status_of(gateway, old) == 401
    assert gateway.process.poll() is None
    answer = call(gateway, new, "GET", "/api/llm/models")
    assert answer.status_code == 200
    assert_log_names_key_not_token(gateway, [answer], "web", old, new)


@pytest.fixture(scope="module")
def keyed(double, tmp_path_factory):
    """One gateway for the scope and model checks, its keys in a TOML file: use, admin, and use for llama3.2 only."""
    tokens = {name: new_token() for name in ("user", "ops", "narrow")}
    path = tmp_path_factory.mktemp("keys") / "keys.toml"
    write_entries(str(path), [entry("user", tokens["user"]), entry("ops", tokens["ops"], scopes=["admin"]),
                              entry("narrow", tokens["narrow"], models=["llama3.2"])])
    gateway = GatewayProcess(double.url, API_KEYS_FILE=str(path)).start()
    yield SimpleNamespace(gateway=gateway, **tokens)
    gateway.stop()


ADMIN_ROUTES = [("POST", "/api/llm/models/pull", {"model": "smollm2"}), ("DELETE", "/api/llm/models/llama3.2", None),
                ("GET", "/api/usage", None), ("GET", "/metrics", None)]


def test_a_use_key_reaches_the_llm_routes_but_not_the_admin_ones(keyed, double):
    gateway = keyed.gateway
    answer = call(gateway, keyed.user, "POST", "/api/llm/generate", {"model": "llama3.2", "prompt": "hi"})
    assert answer.status_code == 200 and answer.json()["response"]
    with requests.post(gateway.url + "/api/llm/stream", json={"model": "llama3.2", "prompt": "hi"},
                       headers=headers_for(keyed.user), stream=True, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = sse_events(response)
    assert any("text" in event for event in events) and events[-1]["done"] is True

    refused = [call(gateway, keyed.user, method, path, body) for method, path, body in ADMIN_ROUTES]
    for answered in refused:
        assert_problem(answered, 403, "'user'", "'admin' scope")
    assert not [seen for seen in double.requests if seen["path"] in ("/api/pull", "/api/delete")]
    listed = call(gateway, keyed.user, "GET", "/api/llm/models")
    assert "llama3.2:latest" in [model["name"] for model in listed.json()["models"]]
    assert_log_names_key_not_token(gateway, [answer, response, *refused, listed], "user", keyed.user)


def test_an_admin_key_manages_models_and_reads_usage_and_metrics(keyed):
    gateway = keyed.gateway
    with requests.post(gateway.url + "/api/llm/models/pull", json={"model": "smollm2"}, headers=headers_for(keyed.ops),
                       stream=True, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = sse_events(response)
    assert len(events) > 1 and all("status" in event and "done" not in event for event in events[:-1])
    assert events[-1] == {"done": True, "status": "success"}
    # The double installs the model just after its last line: wait until it is listed.
    wait_for(lambda: "smollm2:latest" in model_names(gateway, keyed.ops))

    deleted = call(gateway, keyed.ops, "DELETE", "/api/llm/models/smollm2")
    assert deleted.status_code == 204 and deleted.content == b""
    assert "smollm2:latest" not in model_names(gateway, keyed.ops)
    assert call(gateway, keyed.ops, "DELETE", "/api/llm/models/smollm2").status_code == 404

    usage = call(gateway, keyed.ops, "GET", "/api/usage")
    assert usage.status_code == 200 and isinstance(usage.json()["usage"], list)
    metrics = call(gateway, keyed.ops, "GET", "/metrics", bearer=True)
    assert metrics.status_code == 200 and metrics.headers["Content-Type"].startswith("text/plain")
    assert "mlops_requests_total" in metrics.text
    assert_log_names_key_not_token(gateway, [response, deleted, usage, metrics], "ops", keyed.ops)


ALLOW_LIST_ROUTES = {
    "generate": ("POST", "/api/llm/generate", lambda model: {"model": model, "prompt": "hi"}),
    "chat": ("POST", "/api/llm/chat", lambda model: {"model": model, "messages": [{"role": "user", "content": "hi"}]}),
    "stream": ("POST", "/api/llm/stream", lambda model: {"model": model, "prompt": "hi"}),
    "chat stream": ("POST", "/api/llm/chat/stream",
                    lambda model: {"model": model, "messages": [{"role": "user", "content": "hi"}]}),
    "embed": ("POST", "/api/llm/embed", lambda model: {"model": model, "input": "hi"}),
    "show": ("GET", "/api/llm/models/{model}", lambda model: None),
}


@pytest.mark.parametrize("route", list(ALLOW_LIST_ROUTES))
def test_a_key_with_a_model_list_may_use_only_those_models(keyed, double, route):
    method, path, body = ALLOW_LIST_ROUTES[route]
    for model in ("qwen3", "all-minilm:latest", "llama3.2:1b"):
        refused = call(keyed.gateway, keyed.narrow, method, path.format(model=model), body(model))
        assert_problem(refused, 403, "'narrow'", f"may not use the model {model!r}")
    assert not [seen for seen in double.requests if seen["path"] != "/api/version"]  # refused before Ollama
    for model in ("llama3.2", "llama3.2:latest"):
        allowed = call(keyed.gateway, keyed.narrow, method, path.format(model=model), body(model))
        assert allowed.status_code == 200, allowed.text
        if "stream" in route:
            last = data_events(allowed.text)[-1]
            assert last["done"] is True and "error" not in last
    assert call(keyed.gateway, keyed.user, method, path.format(model="qwen3"), body("qwen3")).status_code == 200


def test_a_key_with_a_model_list_sees_only_those_models(keyed):
    assert model_names(keyed.gateway, keyed.narrow) == ["llama3.2:latest"]
    assert sorted(model_names(keyed.gateway, keyed.user)) == ["all-minilm:latest", "llama3.2:latest", "qwen3:latest"]
    assert model_names(keyed.gateway, keyed.narrow, "/api/llm/running") == ["llama3.2:latest"]


def test_a_pulled_model_outside_the_list_stays_hidden(keyed):
    """A model that is loaded but not on the key's list is hidden from /api/llm/running too."""
    response = call(keyed.gateway, keyed.ops, "POST", "/api/llm/models/pull", {"model": "smollm2"})
    assert response.status_code == 200
    wait_for(lambda: "smollm2:latest" in model_names(keyed.gateway, keyed.ops, "/api/llm/running"))
    assert "smollm2:latest" not in model_names(keyed.gateway, keyed.narrow, "/api/llm/running")
    assert "smollm2:latest" not in model_names(keyed.gateway, keyed.narrow)
    assert "smollm2:latest" in model_names(keyed.gateway, keyed.user)


def test_a_missing_or_wrong_key_gets_401(keyed):
    gateway = keyed.gateway
    missing = call(gateway, None, "GET", "/api/llm/models")
    assert_problem(missing, 401, "Send the API key")
    challenge = missing.headers["WWW-Authenticate"]
    assert "X-API-Key" in challenge and "Bearer" in challenge
    for token in ("wrong", keyed.user + "x", digest(keyed.user), keyed.user.removeprefix("mlk_")):
        for bearer in (False, True):
            wrong = call(gateway, token, "GET", "/api/llm/models", bearer=bearer)
            assert_problem(wrong, 401, "not valid")
            assert wrong.headers["WWW-Authenticate"] == challenge
    for token in (keyed.user, keyed.ops, keyed.narrow, API_KEY):
        assert status_of(gateway, token) == 200 and status_of(gateway, token, bearer=True) == 200
    assert status_of(gateway, API_KEY, "/api/usage") == 200  # the shared key has both scopes


# -- refusing to start --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,text", [
    ("keys.json", "{broken"),
    ("keys.toml", 'keys = [{name = "web", sha256 = "abc", scopes = ["use"]}]'),
])
def test_the_gateway_refuses_to_start_with_a_broken_keys_file(double, tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    process = GatewayProcess(double.url, API_KEYS_FILE=str(path))
    try:
        with pytest.raises(RuntimeError, match="gunicorn exited with 2"):
            process.start()
        lines = process.log().strip().splitlines()
    finally:
        code = process.stop()
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"mlops-backend: configuration error: {path}: ")


def test_sighup_with_a_broken_keys_file_keeps_the_gateway_running(start_gateway, tmp_path):
    """A reload must not take the gateway down: new workers accept only API_KEY until the file is fixed."""
    token = new_token()
    path = tmp_path / "keys.json"
    write_entries(str(path), [entry("web", token)])
    gateway = start_gateway(API_KEYS_FILE=str(path), PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"))
    assert status_of(gateway, token) == 200
    path.write_text("{broken")
    workers = set(gateway.worker_pids())
    gateway.process.send_signal(signal.SIGHUP)
    wait_for(lambda: gateway.worker_pids() and not workers & set(gateway.worker_pids()), timeout=15)
    assert gateway.process.poll() is None
    wait_for(lambda: status_of(gateway, API_KEY) == 200, timeout=15)
    assert status_of(gateway, token) == 401  # fails closed for named keys
    assert "configuration error" in gateway.log() and "Keys file not loaded" in gateway.log()
    write_entries(str(path), [entry("web", token)])  # fixed: picked up without another signal
    wait_for(lambda: status_of(gateway, token) == 200, timeout=5)


def test_keys_command_reports_a_broken_file_without_a_traceback(keys_cli):
    keys_cli.keys_file.write_text("{broken")
    message = keys_cli.fails("list")
    assert str(keys_cli.keys_file) in message and "not valid JSON" in message


@pytest.mark.parametrize("name", ["default", "anonymous"])
def test_the_names_the_gateway_gives_callers_are_reserved(name):
    with pytest.raises(KeyFileError, match="reserved"):
        make_entry(name, new_token(), ["use"])
