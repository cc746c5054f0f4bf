"""Run the double as a process: `python -m tests.ollama_double --port 11434` prints its URL and serves."""

import argparse
import signal
import threading

from . import OllamaDouble


def main(argv=None):
    """Serve until SIGTERM or Ctrl-C; the first stdout line is the base URL."""
    parser = argparse.ArgumentParser(prog="python -m tests.ollama_double", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434, help="0 picks a free port")
    parser.add_argument("--verbose", action="store_true", help="log each request to stderr")
    args = parser.parse_args(argv)
    stopped = threading.Event()
    # SIGTERM (how test harnesses end processes) must still shut down cleanly.
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    double = OllamaDouble(host=args.host, port=args.port, verbose=args.verbose).start()
    print(double.url, flush=True)
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        double.stop()


if __name__ == "__main__":
    main()
