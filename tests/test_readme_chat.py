"""The README's two chat examples, run exactly as printed against the real gateway in front of the double.

"Chat from a browser" runs in Debian's Chromium from a page on another origin (tests/browser/chat_check.mjs);
"Chat from Python" runs as a script of its own. Both must stream each answer and send the whole history
(system, user, assistant, user) on the second turn.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import time

import pytest

from tests.support import API_KEY, ROOT
from tests.test_browser import PageServer, access_log, run_node

TOKENS = ["Blue", "berry", " 🫐", " (süß)"]
ANSWER = "".join(TOKENS)
DELAY = 0.25  # between upstream chunks
SYSTEM = "Answer briefly."
QUESTIONS = ["first question", "second question"]


def readme_block(heading: str, language: str) -> str:
    """The first ```language block in the README section `heading`, exactly as written there."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if re.fullmatch(rf"#+ {re.escape(heading)}[ \t]*", line.rstrip("\n"))]
    assert len(starts) == 1, f"README.md has {len(starts)} headings '{heading}', expected one"
    fence, block = None, None
    for line in lines[starts[0] + 1:]:
        if fence is None:
            if line.startswith("#"):
                break  # the next section: no block of ours in this one
            if line.startswith("```"):
                fence = line.strip()
                block = [] if fence == "```" + language else None
        elif line.strip() == "```":
            if block is not None:
                return "".join(block)
            fence = None
        elif block is not None:
            block.append(line)
    raise AssertionError(f"README.md has no ```{language} block under '{heading}'")


def chat_requests(double) -> list[dict]:
    """The bodies of the /api/chat calls the double received, in order."""
    return [r["body"] for r in double.requests if r["path"] == "/api/chat"]


def assert_history_sent(double, answer: str) -> tuple[str, str]:
    """Two /api/chat calls, streamed; the second carries system, user 1, the first answer and user 2.

    Returns the two questions as Ollama received them.
    """
    bodies = chat_requests(double)
    assert len(bodies) == 2, f"expected two /api/chat calls, got {len(bodies)}: {bodies}"
    for body in bodies:
        assert body.get("stream") is True, f"the gateway must ask Ollama to stream: {body}"
        assert body.get("model") == "llama3.2", body
    first, second = bodies[0]["messages"], bodies[1]["messages"]
    assert [m.get("role") for m in first] == ["system", "user"], first
    assert first[0] == {"role": "system", "content": SYSTEM}, first
    assert [m.get("role") for m in second] == ["system", "user", "assistant", "user"], second
    assert second[:2] == first, f"the second turn must resend the first turn's messages unchanged: {second}"
    assert second[2] == {"role": "assistant", "content": answer}, f"the first answer, exactly: {second[2]}"
    assert second[3]["content"] != first[1]["content"], second
    return first[1]["content"], second[3]["content"]


def assert_arrived_piece_by_piece(times: list[float], label: str):
    """Arrival times (seconds) of the pieces of one answer: one per upstream chunk, spread over the answer."""
    assert len(times) == len(TOKENS), f"{label}: {times}"
    assert times[-1] - times[0] > (len(TOKENS) - 1) * DELAY * 0.8, f"{label} came all at once: {times}"
    assert min(b - a for a, b in itertools.pairwise(times)) > DELAY / 3, f"{label}: pieces came together: {times}"


# -- Chat from a browser -------------------------------------------------------------------------------------

@pytest.fixture
def chat_page():
    """A page on an origin of its own whose <script> is the README's "Chat from a browser" block."""
    example = readme_block("Chat from a browser", "js")
    assert "</script" not in example.lower()
    html = f'<!doctype html><meta charset="utf-8"><title>chat check</title>\n<script>\n{example}</script>\n'
    server = PageServer(html.encode())
    yield server
    server.stop()


@pytest.fixture
def browser_chat():
    """Run tests/browser/chat_check.mjs; fail (not skip) when Chromium, node or playwright-core is missing."""
    def run(page_url: str, gateway, questions=QUESTIONS) -> dict:
        result = run_node("chat_check.mjs", {"pageUrl": page_url, "gatewayUrl": gateway.url, "apiKey": API_KEY,
                                             "system": SYSTEM, "questions": questions, "timeoutMs": 30000})
        assert "error" not in result, result
        return result

    return run


def test_browser_chat_streams_each_answer_and_sends_the_history(start_gateway, double, chat_page, browser_chat):
    gateway = start_gateway(ALLOWED_ORIGINS=chat_page.origin)
    double.script(tokens=TOKENS, delay=DELAY)
    result = browser_chat(chat_page.origin + "/", gateway)
    assert result["origin"] == chat_page.origin != gateway.url
    turns = result["turns"]
    assert [t.get("error") for t in turns] == [None, None], turns
    for n, turn in enumerate(turns, 1):
        assert turn["texts"] == TOKENS, f"turn {n}: every piece, in order, emoji and all: {turn}"
        assert turn["answer"] == ANSWER, f"turn {n}: say() must return the whole answer: {turn}"
        times = [ms / 1000 for ms in turn["times"]]
        assert_arrived_piece_by_piece(times, f"turn {n}")
        assert turn["returnedAt"] / 1000 >= times[-1], turn
    # One turn after the other: the second question is only sent once the first answer is complete.
    assert turns[1]["times"][0] > turns[0]["returnedAt"], turns
    assert assert_history_sent(double, ANSWER) == tuple(QUESTIONS)
    log = access_log(gateway, 'access: POST /api/llm/chat/stream')
    assert log.count('access: POST /api/llm/chat/stream 200') == 2, log


def test_browser_chat_remembers_each_turns_own_answer(start_gateway, double, chat_page, browser_chat):
    # Unscripted tokens: the double answers "You said: <question>", so the two answers differ.
    gateway = start_gateway(ALLOWED_ORIGINS=chat_page.origin)
    double.script(delay=0.05)
    questions = ["Name a blue fruit 🫐", "And a red one?"]
    result = browser_chat(chat_page.origin + "/", gateway, questions)
    turns = result["turns"]
    assert [t.get("error") for t in turns] == [None, None], turns
    answers = [f"You said: {q}" for q in questions]
    assert [t["answer"] for t in turns] == answers, turns
    assert ["".join(t["texts"]) for t in turns] == answers, turns
    assert assert_history_sent(double, answers[0]) == tuple(questions)


# -- Chat from Python ----------------------------------------------------------------------------------------

@pytest.fixture
def python_chat(tmp_path, gateway):
    """Write the README's "Chat from Python" block to a file; return how to run it against the gateway."""
    script = tmp_path / "chat.py"
    script.write_text(readme_block("Chat from Python", "python"), encoding="utf-8")
    # Without PYTHONUNBUFFERED (set in some shells and CI images) stdout to a pipe is block-buffered, so the
    # pieces reach us one by one only if the example flushes them itself, as it says it does.
    base = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env = {**base, "GATEWAY_URL": gateway.url, "API_KEY": API_KEY, "PYTHONIOENCODING": "utf-8"}
    return [sys.executable, str(script)], env


def test_python_chat_prints_both_answers_and_sends_the_history(double, python_chat):
    command, env = python_chat
    double.script(tokens=TOKENS, delay=DELAY)
    done = subprocess.run(command, check=False, env=env, capture_output=True, timeout=60)
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 0, f"the README's Python example exited with {done.returncode}:\n{stderr}"
    assert done.stdout.decode() == f"{ANSWER}\n{ANSWER}\n", done.stdout.decode()
    assert_history_sent(double, ANSWER)


def test_python_chat_remembers_each_turns_own_answer(double, python_chat):
    # Unscripted tokens: the double answers "You said: <question>", so the two answers differ.
    command, env = python_chat
    double.script(delay=0.02)
    done = subprocess.run(command, check=False, env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    bodies = chat_requests(double)
    assert len(bodies) == 2, bodies
    first_question = bodies[0]["messages"][-1]["content"]
    questions = assert_history_sent(double, f"You said: {first_question}")
    assert done.stdout.decode().splitlines() == [f"You said: {q}" for q in questions], done.stdout.decode()


def test_python_chat_prints_each_piece_as_it_arrives(double, python_chat):
    command, env = python_chat
    double.script(tokens=TOKENS, delay=DELAY)
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        arrivals, output = [], b""  # (time, bytes of output so far) after each read
        deadline = time.monotonic() + 60
        while piece := os.read(process.stdout.fileno(), 65536):
            output += piece
            arrivals.append((time.monotonic(), len(output)))
            assert time.monotonic() < deadline, "the README's Python example ran for over 60 s"
        assert process.wait(10) == 0, process.stderr.read().decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()
    assert output.decode() == f"{ANSWER}\n{ANSWER}\n", output
    # When did each piece of the first answer reach stdout?
    ends = [len("".join(TOKENS[:i + 1]).encode()) for i in range(len(TOKENS))]
    times = [next(t for t, size in arrivals if size >= end) for end in ends]
    assert_arrived_piece_by_piece(times, "the first answer")
