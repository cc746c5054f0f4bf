"""The router on its own: ranking, candidates, failover and circuits, with fake upstream clients."""

from __future__ import annotations

import pytest

from mlops_backend.upstream.client import ModelNotFound, OllamaBadResponse, OllamaUnreachable
from mlops_backend.upstream.conversations import conversation, session_key
from mlops_backend.upstream.router import Router
from mlops_backend.upstream.upstreams import UpstreamSpec


class FakeStream:
    def __init__(self, status=200, error=None):
        self.status, self.headers, self._error, self.closed = status, {}, error, False

    def wait_head(self, wait, raw=False):
        if self._error is not None:
            raise self._error
        return True

    def raise_for_status(self):
        pass

    def close(self):
        self.closed = True


class FakeClient:
    """Answers each open() with the next of `answers`: a status, or an exception to raise at open or head."""

    def __init__(self, *answers):
        self.answers, self.opened = list(answers), 0

    def open(self, method, path, body, model, content_type="application/json", headers=()):
        self.opened += 1
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, OllamaUnreachable):
            raise answer
        if isinstance(answer, Exception):
            return FakeStream(error=answer)
        return FakeStream(answer)

    def close(self):
        pass


def router(*specs, clients=None, **options):
    clients = clients or {}
    made = Router([UpstreamSpec(name, f"http://{name}:11434", **extra) for name, extra in specs],
                  lambda spec: clients.get(spec.name) or FakeClient(), **options)
    return made


def discovered(made, name, installed, loaded=()):
    upstream = made.by_name[name]
    upstream.installed = frozenset(installed)
    upstream.loaded = frozenset(loaded)


@pytest.fixture
def three():
    made = router(("a", {}), ("b", {}), ("c", {}))
    discovered(made, "a", {"llama3.2:latest", "qwen3:latest"})
    discovered(made, "b", {"llama3.2:latest"}, {"llama3.2:latest"})
    discovered(made, "c", {"qwen3:latest"})
    return made


def names(upstreams):
    return [u.name for u in upstreams]


def test_candidates_have_the_model_and_the_warm_one_comes_first(three):
    assert names(three.candidates("llama3.2")) == ["b", "a"]
    assert names(three.candidates("LLAMA3.2:latest")) == ["b", "a"]  # any spelling of the same model
    assert set(names(three.candidates("qwen3"))) == {"a", "c"}


def test_a_model_no_upstream_has_is_not_found(three, monkeypatch):
    refreshed = []
    monkeypatch.setattr(three, "_refresh_all", lambda: refreshed.append(True))
    with pytest.raises(ModelNotFound):
        three.candidates("ghost")
    with pytest.raises(ModelNotFound):
        three.candidates("ghost")
    assert refreshed == [True]  # asked at once, but at most once a second


def test_in_flight_per_max_parallel_then_weight_then_the_conversation():
    made = router(("a", {"max_parallel": 1}), ("b", {"max_parallel": 4, "weight": 2}))
    for name in ("a", "b"):
        discovered(made, name, {"m:latest"})
    assert names(made.candidates("m")) == ["b", "a"]  # equal load: the heavier weight
    release = [made.counter.acquire("b") for _ in range(2)]  # b: 2/4 = 0.5, a: 0/1 = 0
    assert names(made.candidates("m")) == ["a", "b"]
    made.counter.acquire("a")  # a: 1/1 = 1.0
    assert names(made.candidates("m")) == ["b", "a"]
    for done in release:
        done()


def test_a_conversation_keeps_its_upstream_while_all_else_is_equal():
    made = router(("a", {}), ("b", {}))
    for name in ("a", "b"):
        discovered(made, name, {"m:latest"})
    sessions = [f"session:{n}" for n in range(20)]
    first = {s: made.candidates("m", s)[0].name for s in sessions}
    assert set(first.values()) == {"a", "b"}  # conversations spread
    assert all(made.candidates("m", s)[0].name == first[s] for s in sessions for _ in range(3))
    made.remember("session:0", made.by_name["b" if first["session:0"] == "a" else "a"])
    assert made.candidates("m", "session:0")[0].name != first["session:0"]  # it follows who served it


def test_conversation_keys_are_stable_over_turns():
    turn1 = [{"role": "system", "content": "s"}, {"role": "user", "content": "one"}]
    turn2 = turn1 + [{"role": "assistant", "content": "a"}, {"role": "user", "content": "two"}]
    assert conversation(turn1) == conversation(turn2) != conversation([{"role": "user", "content": "other"}])
    assert session_key("chat-1", turn1) == "session:chat-1"
    assert session_key("bad id with spaces", turn1) == conversation(turn1) and session_key(None, None) is None


def test_failover_before_the_first_byte_and_never_after_a_4xx():
    clients = {"a": FakeClient(OllamaUnreachable("refused")), "b": FakeClient(503), "c": FakeClient(404)}
    made = router(("a", {"weight": 3}), ("b", {"weight": 2}), ("c", {}), clients=clients)
    for name in "abc":
        discovered(made, name, {"m:latest"})
    stream = made.open("POST", "/api/generate", b"{}", model="m")
    assert stream.wait_head(1.0, raw=True) and stream.status == 404 and stream.upstream.name == "c"
    assert [clients[n].opened for n in "abc"] == [1, 1, 1]
    stream.close()


def test_retries_are_bounded_and_the_last_answer_stands():
    clients = {name: FakeClient(503) for name in "abcd"}
    made = router(*((name, {}) for name in "abcd"), clients=clients, retries=2)
    for name in "abcd":
        discovered(made, name, {"m:latest"})
    stream = made.open("POST", "/api/generate", b"{}", model="m")
    assert stream.wait_head(1.0, raw=True) and stream.status == 503
    assert sum(c.opened for c in clients.values()) == 3  # the first try and UPSTREAM_RETRIES (2) more


def test_a_reset_before_the_answer_is_retried_only_without_side_effects():
    reset = OllamaBadResponse("dropped")
    reset.before_answer = True
    clients = {"a": FakeClient(reset, reset), "b": FakeClient(200, 200)}
    made = router(("a", {"weight": 2}), ("b", {}), clients=clients)
    for name in "ab":
        discovered(made, name, {"m:latest"})
    posted = made.open("POST", "/api/generate", b"{}", model="m")
    with pytest.raises(OllamaBadResponse):
        posted.wait_head(1.0)  # a POST that may have been read is not sent again
    assert clients["b"].opened == 0
    got = made.open("GET", "/api/show", b"", model="m")
    assert got.wait_head(1.0) and got.upstream.name == "b"


def test_failures_in_a_row_take_an_upstream_out_and_one_probe_brings_it_back(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("mlops_backend.upstream.router.time.monotonic", lambda: clock[0])
    clients = {"a": FakeClient(*[OllamaUnreachable("refused")] * 3), "b": FakeClient()}
    made = router(("a", {"weight": 2}), ("b", {}), clients=clients, failures=3, cooldown=10)
    for name in "ab":
        discovered(made, name, {"m:latest"})
    for _ in range(3):
        made.open("POST", "/api/generate", b"{}", model="m").close()  # each fails over from a to b
    assert not made.by_name["a"].up and names(made.candidates("m")) == ["b"]
    clock[0] += 10
    assert names(made.candidates("m"))[0] == "a"  # cooldown over: the next request probes it
    probe = made.open("POST", "/api/generate", b"{}", model="m")
    assert probe.upstream.name == "a" and probe.wait_head(1.0)
    assert made.by_name["a"].up  # the probe answered: back in rotation


def test_with_one_upstream_everything_goes_to_it():
    made = router(("only", {}))
    assert made.single and names(made.candidates("anything")) == ["only"]
