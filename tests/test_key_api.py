"""Named keys over HTTP (KEYS_STORE=database): the admin API, rotation, expiry, disabling, the CLI on the
database, and every worker of every instance seeing a change within about a second; unit checks of the
file's new settings and of the KeyRing's polling."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time

import pytest
import requests

from mlops_backend import schemas
from mlops_backend.security import keys
from mlops_backend.security.keys import (ApiKey, Credential, KeyRing, digest, make_entry, new_token, read_entries,
                                         write_entries)
from tests.support import API_KEY, AUTH, CONFIG_VARIABLES, ROOT, wait_for_access_line

PROBLEM = "application/problem+json"


class Client:
    """Requests to one gateway, every answer kept (to check that none holds a key it should not)."""

    def __init__(self, gateway, answers: list):
        self.gateway, self.answers = gateway, answers

    def __call__(self, method: str, path: str, body=None, token: str = API_KEY, keep: bool = True):
        response = requests.request(method, self.gateway.url + path, json=body, headers={"X-API-Key": token},
                                    timeout=30)
        if keep:
            self.answers.append(response)
        return response


def wait_until(check, timeout: float = 2.0) -> float:
    """Call check() until it is true; return the seconds it took, fail past `timeout`."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"still false after {timeout} s"
        time.sleep(0.02)
    return time.monotonic() - start


def assert_problem(response, status: int, phrase: str = "") -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith(PROBLEM)
    problem = response.json()
    assert problem["status"] == status and phrase in problem["detail"], problem
    return problem


def iso(seconds_from_now: float) -> str:
    moment = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds_from_now)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'keys.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def keyed(start_gateway, tmp_path):
    """One gateway with KEYS_STORE=database (SQLite), and its client."""
    answers = []
    gateway = start_gateway(KEYS_STORE="database", DATABASE_URL=f"sqlite:///{tmp_path / 'keys.db'}")
    yield Client(gateway, answers)


def create(client, name: str, **settings) -> str:
    response = client("POST", "/api/keys", {"name": name, "scopes": ["use"], **settings})
    assert response.status_code == 201, response.text
    assert response.headers["Cache-Control"] == "no-store"
    return response.json()["key"]


# -- the lifecycle, on two instances ------------------------------------------------------------------------------


def test_the_whole_lifecycle_over_http_seen_by_two_instances(start_gateway, database_url):
    answers = []
    first = Client(start_gateway(KEYS_STORE="database", DATABASE_URL=database_url, WEB_CONCURRENCY="2"), answers)
    second = Client(start_gateway(KEYS_STORE="database", DATABASE_URL=database_url), answers)
    # Both have read the store once already: what follows measures the poll, not a first read.
    assert first("GET", "/api/keys").json() == second("GET", "/api/keys").json() == {"keys": []}

    created = first("POST", "/api/keys", {"name": "web", "scopes": ["use"], "models": ["llama3.2"],
                                          "limits": {"requests_per_minute": 100, "concurrent_streams": 3,
                                                     "tokens_per_minute": 5000},
                                          "budget": {"tokens_per_day": 100000, "tokens_per_month": None},
                                          "expires_at": "2999-01-01T00:00:00Z"})
    assert created.status_code == 201, created.text
    body = created.json()
    token = body.pop("key")
    assert token.startswith("mlk_")
    assert body["name"] == "web" and body["scopes"] == ["use"] and body["models"] == ["llama3.2"]
    assert body["limits"] == {"requests_per_minute": 100, "concurrent_streams": 3, "tokens_per_minute": 5000}
    assert body["budget"] == {"tokens_per_day": 100000, "tokens_per_month": None}
    assert body["expires_at"] == "2999-01-01T00:00:00Z" and body["expired"] is False and body["disabled"] is False
    assert body["rotation_grace_until"] is None and body["created_at"].endswith("Z")

    # The other instance uses it within about a second (it polls the store's version once a second).
    seen = wait_until(lambda: second("GET", "/api/key", token=token, keep=False).status_code == 200)
    print(f"\ncreated key seen by the other instance after {seen:.2f} s")
    own = second("GET", "/api/key", token=token).json()
    assert own["name"] == "web" and own["limits"]["tokens_per_minute"] == 5000
    assert own["budget"]["tokens_per_day"] == 100000 and own["expires_at"] == "2999-01-01T00:00:00Z"
    assert isinstance(own["remaining"], dict)
    assert second("GET", "/api/llm/models", token=token).status_code == 200
    assert second("GET", "/api/keys", token=token).status_code == 403  # use, not admin

    listed = second("GET", "/api/keys").json()["keys"]
    assert [key["name"] for key in listed] == ["web"]
    assert first("GET", "/api/keys/web").json() == listed[0]
    assert_problem(first("GET", "/api/keys/nobody"), 404, "'nobody'")

    changed = first("PATCH", "/api/keys/web", {"scopes": ["use", "cloud"], "models": None,
                                               "limits": {"requests_per_minute": None}, "budget": None})
    assert changed.status_code == 200, changed.text
    assert changed.json()["scopes"] == ["use", "cloud"] and changed.json()["models"] is None
    assert changed.json()["limits"] == {"requests_per_minute": None, "concurrent_streams": 3,
                                        "tokens_per_minute": 5000}
    assert changed.json()["budget"] == {"tokens_per_day": None, "tokens_per_month": None}
    wait_until(lambda: second("GET", "/api/key", token=token, keep=False).json()["models"] is None)

    assert_problem(first("POST", "/api/keys", {"name": "web", "scopes": ["admin"]}), 409, "'web' exists")
    bad = assert_problem(first("POST", "/api/keys", {"name": "two words", "scopes": ["root"], "extra": 1,
                                                     "limits": {"requests_per_minute": -1},
                                                     "expires_at": "tomorrow"}), 422)
    assert {error["field"] for error in bad["errors"]} == {"name", "scopes.0", "extra", "limits.requests_per_minute",
                                                           "expires_at"}
    assert_problem(first("POST", "/api/keys", {"name": "default", "scopes": ["use"]}), 422, "name")
    assert_problem(first("PATCH", "/api/keys/web", {"scopes": ["cloud"]}), 422, "scopes")
    assert_problem(first("PATCH", "/api/keys/web", {"disabled": "yes"}), 422, "disabled")

    assert first("DELETE", "/api/keys/web").status_code == 204
    gone = wait_until(lambda: second("GET", "/api/key", token=token, keep=False).status_code == 401)
    print(f"revoked key refused by the other instance after {gone:.2f} s")
    assert_problem(second("GET", "/api/llm/models", token=token), 401, "not valid")
    last_of_first = first("DELETE", "/api/keys/web")
    assert_problem(last_of_first, 404)
    last_of_second = second("GET", "/api/keys")
    assert last_of_second.json() == {"keys": []}

    # Each instance has written the line of its last request: nothing it logs can be missing below.
    wait_for_access_line(first.gateway, last_of_first.headers["X-Request-ID"])
    wait_for_access_line(second.gateway, last_of_second.headers["X-Request-ID"])
    log = first.gateway.log()
    assert "Key 'web' created by admin 'default'" in log and "Key 'web' revoked by admin 'default'" in log
    assert "Key 'web' changed by admin 'default'" in log
    for gateway in (first, second):
        assert token not in gateway.gateway.log() and digest(token) not in gateway.gateway.log()
    for answer in answers:
        if answer is not created:  # the only answer that holds it
            assert token not in answer.text and digest(token) not in answer.text, answer.request.url


# -- rotation, expiry, disabling ----------------------------------------------------------------------------------


def test_rotation_with_grace_keeps_the_old_key_working_until_it_ends(keyed):
    old = create(keyed, "web")
    rotated = keyed("POST", "/api/keys/web/rotate", {"grace_seconds": 2})
    assert rotated.status_code == 200, rotated.text
    assert rotated.headers["Cache-Control"] == "no-store"
    new = rotated.json()["key"]
    assert new != old and rotated.json()["rotation_grace_until"] is not None
    ended = time.monotonic() + 2
    assert keyed("GET", "/api/key", token=new).status_code == 200
    assert keyed("GET", "/api/key", token=old).status_code == 200  # in its grace
    assert keyed("GET", "/api/keys/web").json()["rotation_grace_until"] == rotated.json()["rotation_grace_until"]
    time.sleep(max(ended - time.monotonic(), 0) + 0.2)
    assert_problem(keyed("GET", "/api/key", token=old), 401, "not valid")
    assert keyed("GET", "/api/key", token=new).status_code == 200
    assert keyed("GET", "/api/keys/web").json()["rotation_grace_until"] is None
    for answer in keyed.answers:
        if answer is not rotated and answer.request.path_url != "/api/keys":
            assert new not in answer.text and old not in answer.text, answer.request.url
    assert new not in keyed.gateway.log() and old not in keyed.gateway.log()
    assert "Key 'web' rotated by admin 'default'" in keyed.gateway.log()


def test_rotation_without_grace_refuses_the_old_key_at_once(keyed):
    old = create(keyed, "web")
    rotated = keyed("POST", "/api/keys/web/rotate")  # no body: no grace
    assert rotated.status_code == 200 and rotated.json()["rotation_grace_until"] is None
    assert_problem(keyed("GET", "/api/key", token=old), 401)
    assert keyed("GET", "/api/key", token=rotated.json()["key"]).status_code == 200
    assert_problem(keyed("POST", "/api/keys/web/rotate", {"grace_seconds": -1}), 422, "grace_seconds")
    assert_problem(keyed("POST", "/api/keys/nobody/rotate", {"grace_seconds": 5}), 404)


def test_an_expired_key_gets_401_saying_so_in_every_api_shape(keyed, double):
    token = create(keyed, "brief", expires_at=iso(2))
    assert keyed("GET", "/api/llm/models", token=token).status_code == 200
    assert keyed("GET", "/ollama/api/tags", token=token).status_code == 200
    time.sleep(2.2)
    assert_problem(keyed("GET", "/api/llm/models", token=token), 401, "The API key has expired")
    ollama = keyed("GET", "/ollama/api/tags", token=token)
    assert ollama.status_code == 401 and ollama.json() == {"error": "The API key has expired"}
    openai = keyed("GET", "/v1/models", token=token)
    assert openai.status_code == 401 and openai.json()["error"]["message"] == "The API key has expired"
    assert keyed("GET", "/api/keys/brief").json()["expired"] is True
    # A new expiry (or none) brings it back.
    assert keyed("PATCH", "/api/keys/brief", {"expires_at": None}).json()["expired"] is False
    assert keyed("GET", "/api/llm/models", token=token).status_code == 200


def test_a_disabled_key_gets_401_until_it_is_enabled(keyed):
    token = create(keyed, "web")
    assert keyed("PATCH", "/api/keys/web", {"disabled": True}).json()["disabled"] is True
    assert_problem(keyed("GET", "/api/llm/models", token=token), 401, "The API key is disabled")
    assert keyed("GET", "/ollama/api/tags", token=token).json() == {"error": "The API key is disabled"}
    assert keyed("PATCH", "/api/keys/web", {"disabled": False}).status_code == 200
    assert keyed("GET", "/api/llm/models", token=token).status_code == 200
    assert "Key 'web' changed by admin 'default': disabled" in keyed.gateway.log()


# -- the file store, scopes, the calling key ----------------------------------------------------------------------


def test_with_the_file_store_the_routes_answer_409_naming_keys_store(gateway):
    client = Client(gateway, [])
    for method, path, body in [("POST", "/api/keys", {"name": "web", "scopes": ["use"]}), ("GET", "/api/keys", None),
                               ("GET", "/api/keys/web", None), ("PATCH", "/api/keys/web", {"disabled": True}),
                               ("DELETE", "/api/keys/web", None), ("POST", "/api/keys/web/rotate", None)]:
        assert_problem(client(method, path, body), 409, "KEYS_STORE")
    own = client("GET", "/api/key").json()
    assert own["name"] == "default" and own["scopes"] == ["use", "admin"] and own["expires_at"] is None
    assert set(own) == {"name", "scopes", "models", "limits", "budget", "expires_at", "remaining"}
    assert_problem(client("GET", "/api/key", token="wrong"), 401)


def test_a_key_without_the_admin_scope_gets_403(keyed):
    token = create(keyed, "web")
    for method, path in [("GET", "/api/keys"), ("POST", "/api/keys"), ("GET", "/api/keys/web"),
                         ("DELETE", "/api/keys/web"), ("POST", "/api/keys/web/rotate")]:
        assert_problem(keyed(method, path, {}, token=token), 403, "'admin'")
    assert keyed("GET", "/api/key", token=token).status_code == 200


# -- the CLI on the database --------------------------------------------------------------------------------------


def flask_keys(database_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(CONFIG_VARIABLES + ("FLASK_", "KEYS_"))}
    env.update(PYTHONPATH=str(ROOT), API_KEY=API_KEY, OLLAMA_BASE_URL="http://127.0.0.1:9", FLASK_SKIP_DOTENV="1",
               DATABASE_URL=database_url, KEYS_STORE="database")
    return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "keys", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_cli_manages_the_database_store_of_a_running_gateway(start_gateway, tmp_path):
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    gateway = start_gateway(KEYS_STORE="database", DATABASE_URL=url)
    made = flask_keys(url, "create", "ops", "--scope", "admin", "--model", "llama3.2", "--rpm", "7",
                      "--tokens-per-minute", "100", "--tokens-per-day", "1000", "--tokens-per-month", "9000",
                      "--expires", "2999-01-01T00:00:00Z")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("mlk_") and "Created 'ops' (admin) in the database" in made.stderr
    wait_until(lambda: requests.get(gateway.url + "/api/key", headers={"X-API-Key": token}, timeout=5).ok)
    shown = requests.get(gateway.url + "/api/keys/ops", headers=AUTH, timeout=5).json()
    assert shown["limits"] == {"requests_per_minute": 7, "concurrent_streams": None, "tokens_per_minute": 100}
    assert shown["budget"] == {"tokens_per_day": 1000, "tokens_per_month": 9000}
    assert shown["expires_at"] == "2999-01-01T00:00:00Z" and shown["models"] == ["llama3.2"]

    again, listing = flask_keys(url, "create", "ops"), flask_keys(url, "list")
    assert again.returncode != 0 and "a key named 'ops' exists" in again.stderr
    [row] = [line.split("\t") for line in listing.stdout.splitlines()]
    assert row[:5] == ["ops", "admin", "models=llama3.2", "rpm=7", "streams=default"]
    assert row[6:] == ["tokens_per_minute=100", "tokens_per_day=1000", "tokens_per_month=9000",
                       "expires=2999-01-01T00:00:00Z"]
    assert token not in listing.stdout and digest(token) not in listing.stdout

    revoked = flask_keys(url, "revoke", "ops")
    assert revoked.returncode == 0 and "Revoked 'ops'" in revoked.stderr
    wait_until(lambda: requests.get(gateway.url + "/api/key", headers={"X-API-Key": token}, timeout=5)
               .status_code == 401)
    missing = flask_keys(url, "revoke", "ops")
    assert missing.returncode != 0 and "no key named 'ops'" in missing.stderr and "Traceback" not in missing.stderr
    assert flask_keys(url, "list").stdout == "no keys\n"


# -- units: the file's settings, the schemas, the KeyRing's polling -----------------------------------------------


def test_the_keys_file_carries_token_limits_a_budget_an_expiry_and_disabled(tmp_path):
    token, other = new_token(), new_token()
    path = tmp_path / "keys.toml"
    write_entries(str(path), [
        make_entry("web", token, ["use"], tokens_per_minute=10, tokens_per_day=100, tokens_per_month=1000,
                   expires_at=4102444800.0),
        {**make_entry("off", other, ["use"]), "disabled": True}])
    [web, off] = read_entries(str(path))
    assert web["limits"] == {"tokens_per_minute": 10}
    assert web["budget"] == {"tokens_per_day": 100, "tokens_per_month": 1000}
    assert web["expires_at"] == "2100-01-01T00:00:00Z" and off["disabled"] is True
    ring = KeyRing("", str(path))
    key = ring.identify(token)
    assert (key.tokens_per_minute, key.tokens_per_day, key.tokens_per_month) == (10, 100, 1000)
    assert key.expires_at == 4102444800.0 and not key.expired() and key.expired(4102444800.0)
    assert ring.identify(other).disabled is True
    for change, phrase in [({"budget": {"tokens": 1}}, "budget may hold tokens_per_day and tokens_per_month"),
                           ({"budget": {"tokens_per_day": -1}}, "budget.tokens_per_day must be an integer >= 0"),
                           ({"expires_at": "soon"}, "expires_at must be an ISO-8601 timestamp"),
                           ({"disabled": "yes"}, "disabled must be true or false")]:
        with pytest.raises(keys.KeyFileError, match=phrase):
            keys.parse_entry({**web, **change}, "here")


def test_a_toml_datetime_is_an_expiry_too(tmp_path):
    path = tmp_path / "keys.toml"
    entry = make_entry("web", new_token(), ["use"])
    path.write_text(f'[[keys]]\nname = "web"\nsha256 = "{entry["sha256"]}"\nscopes = ["use"]\n'
                    "expires_at = 2100-01-01T00:00:00Z\n")
    assert KeyRing("", str(path)).names() == ["web"]
    assert keys.parse_entry(read_entries(str(path))[0], "here").expires_at == 4102444800.0


def test_the_schemas_know_the_scopes_and_names_security_does():
    """schemas.py sits below security/ and repeats its constants: they must agree."""
    assert schemas.KEY_SCOPES == keys.SCOPES and schemas.RESERVED_KEY_NAMES == keys.RESERVED_NAMES
    assert schemas.KEY_NAME == keys._NAME.pattern


class CountingStore:
    """A store whose version the test moves, counting how often the ring asks."""

    errors = ()

    def __init__(self, token: str):
        self.version, self.stamps, self.loads, self.token = 1, 0, 0, token

    def stamp(self):
        self.stamps += 1
        return self.version

    def credentials(self):
        self.loads += 1
        return [Credential(digest(self.token), ApiKey(f"web{self.version}"))]


def test_the_ring_polls_the_version_at_most_once_a_second_and_reloads_only_when_it_moved():
    token = new_token()
    store = CountingStore(token)
    ring = KeyRing("", store=store)
    assert store.stamps == 0  # nothing is read before the first request
    assert ring.identify(token).name == "web1"
    for _ in range(100):
        ring.identify(token)
    assert (store.stamps, store.loads) == (1, 1)  # no database read per request
    ring.RECHECK_SECONDS = 0.0
    ring.identify(token)
    assert (store.stamps, store.loads) == (2, 1)  # polled, same version: not reloaded
    store.version = 2
    assert ring.identify(token).name == "web2" and store.loads == 2
    ring.RECHECK_SECONDS = 60.0
    store.version = 3
    ring.refresh()  # this worker changed the store: look again at once
    assert ring.identify(token).name == "web3"


def test_a_rotated_keys_old_hash_works_only_until_its_grace_ends():
    old, new = new_token(), new_token()

    class Rotated(CountingStore):
        def credentials(self):
            key = ApiKey("web")
            return [Credential(digest(new), key), Credential(digest(old), key, time.time() + 0.3)]

    ring = KeyRing("", store=Rotated(new))
    assert ring.identify(old).name == "web" and ring.identify(new).name == "web"
    time.sleep(0.35)
    assert ring.identify(old) is None and ring.identify(new).name == "web"
