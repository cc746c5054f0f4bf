"""gunicorn settings for a streaming gateway: gevent workers, long streams, graceful shutdown.

Run with `gunicorn -c gunicorn.conf.py wsgi:app`. Every value can be overridden from the
environment (the variables below) or on gunicorn's command line.
"""

import multiprocessing
import os
import sys

from dotenv import load_dotenv

from mlops_backend.config import Config, ConfigError

# .env feeds both the app's Config and the GUNICORN_* settings below; real variables win.
load_dotenv(".env", override=False)

# Validate the whole config in the master, before any worker starts: one clear line, no traceback.
try:
    _config = Config.from_env()
except ConfigError as error:
    sys.stderr.write(f"mlops-backend: configuration error: {error}\n")
    sys.exit(2)

bind = f"{_config.host}:{_config.port}"
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count()))
# gevent: one greenlet per connection, so one worker holds thousands of idle streams.
worker_class = "gevent"
# Open connections per worker (each stream is one); raise the fd limit (ulimit -n) to match.
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", 4000))
# The worker timeout only catches a worker whose event loop is stuck: gevent workers report
# in from their own greenlet, so a healthy stream of any length never trips it.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", 60))
# On SIGTERM a worker stops accepting, lets running streams finish for this long, then exits.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", 120))
# Longer than nginx's upstream keepalive_timeout (60 s), so nginx closes idle connections first
# and never reuses one we are closing.
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", 75))
# Trust X-Forwarded-* only from the proxy in front of us (nginx on the same host by default).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
# Nothing is preloaded in the master, so each worker imports the app after gevent patched it.
preload_app = False

loglevel = _config.log_level.lower()
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-")
errorlog = "-"
# %({x-request-id}o)s is the id the app put on the response: the same one its own log lines carry.
# fwd= is the client address nginx forwards (X-Forwarded-For), since %(h)s is nginx itself there.
access_log_format = '%(h)s fwd=%({x-forwarded-for}i)s "%(r)s" %(s)s %(B)s %(M)sms rid=%({x-request-id}o)s ua="%(a)s"'
# gunicorn's control socket (a file under $HOME) is not needed to run the gateway; containers
# and read-only homes are simpler without it.
control_socket_disable = True
