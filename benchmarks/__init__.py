"""Benchmark harness for the mlops-backend gateway.

Modules:

* ``upstream``  - a fast, paced, Ollama-compatible HTTP server (test double).
* ``loadgen``   - raw-socket asyncio load client (keep-alive POST load, SSE and
  NDJSON stream readers, cancellation).
* ``procfs``    - CPU time and RSS readings from /proc.
* ``scenarios`` - the M1..M5 scenarios and the process orchestration.
* ``report``    - the printed table and the JSON result file.

Run ``python -m benchmarks run --quick`` from the repository root.
Only the standard library is used.
"""

TOKEN_TEXT = "tok "
BENCH_MODEL = "bench"
API_KEY = "bench-key-0123456789abcdef"
