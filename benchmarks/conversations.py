"""What a long history costs a conversation turn: a turn on a 1,000-turn conversation against a turn on a
new one, through the real gateway (gunicorn, one gevent worker) in front of the Ollama double.

The 1,000 question-and-answer pairs (200 words each) are written straight into the database; then
whole turns ("stream": false) alternate between the long conversation and new empty ones, --reps
of each after a warm-up. The long turn reads the 2,000 stored messages, trims them to the model's
context (llama3.2's 131,072 tokens in the double) and sends the rest, so Ollama's share is the same
in both and the difference is the gateway's. Printed as JSON: median and p90 milliseconds of each,
their difference, and their ratio (these machines are noisy: compare ratios, not times).

Run (from a checkout): .venv/bin/python benchmarks/conversations.py [--reps 30] [--turns 1000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from tests.ollama_double import OllamaDouble
from tests.support import API_KEY, GatewayProcess, seed_conversation

HEADERS = {"X-API-Key": API_KEY}


def conversation(url: str) -> str:
    return requests.post(url + "/api/llm/conversations", json={"model": "llama3.2"}, headers=HEADERS,
                         timeout=30).json()["id"]


def turn(url: str, conversation_id: str) -> float:
    started = time.perf_counter()
    response = requests.post(f"{url}/api/llm/conversations/{conversation_id}/messages",
                             json={"content": "one more question", "stream": False}, headers=HEADERS, timeout=60)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text
    return elapsed


def summary(times: list[float]) -> dict:
    ordered = sorted(times)
    return {"median_ms": round(statistics.median(ordered) * 1000, 2),
            "p90_ms": round(ordered[int(len(ordered) * 0.9) - 1] * 1000, 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--turns", type=int, default=1000)
    parser.add_argument("--words", type=int, default=200)
    args = parser.parse_args(argv)
    double = OllamaDouble().start()
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{directory}/bench.db"
        gateway = GatewayProcess(double.url, DATABASE_URL=url, LOG_LEVEL="warning").start()
        try:
            long = conversation(gateway.url)
            seed_conversation(url, long, args.turns, args.words)
            turn(gateway.url, long), turn(gateway.url, conversation(gateway.url))  # warm-up
            short_times, long_times = [], []
            for _ in range(args.reps):
                short_times.append(turn(gateway.url, conversation(gateway.url)))
                long_times.append(turn(gateway.url, long))
        finally:
            gateway.stop()
            double.stop()
    short, longer = summary(short_times), summary(long_times)
    print(json.dumps({"turns": args.turns, "words_per_message": args.words, "reps": args.reps,
                      "new_conversation": short, "long_conversation": longer,
                      "added_ms_median": round(longer["median_ms"] - short["median_ms"], 2),
                      "ratio_median": round(longer["median_ms"] / short["median_ms"], 2)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
