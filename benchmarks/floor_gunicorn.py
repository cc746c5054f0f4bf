"""gunicorn settings for the floor (benchmarks/floor.py): the gateway's worker setup, nothing else.

Mirrors the worker settings of the repository's gunicorn.conf.py (gevent, one worker, the
benchmark's worker_connections, keepalive 75, timeout 60) without importing mlops_backend, so
the floor and the gateway differ only in the application.  Run from the repository root:
``gunicorn -c benchmarks/floor_gunicorn.py benchmarks.floor:app``.
"""

import os

bind = os.environ.get("FLOOR_BIND", "127.0.0.1:8090")
workers = 1
worker_class = "gevent"
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", 12000))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", 60))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", 120))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", 75))
preload_app = False  # the worker imports the app after gevent patched sockets
loglevel = "info"
accesslog = None
errorlog = "-"
control_socket_disable = True
