"""gunicorn settings for a streaming gateway: gevent workers, long streams, graceful shutdown.

Run with `gunicorn -c gunicorn.conf.py wsgi:app`. Every value can be overridden from the
environment (the variables below) or on gunicorn's command line.
"""

import glob
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile

from dotenv import load_dotenv

from mlops_backend.config import Config, ConfigError
from mlops_backend.security.keys import KeyFileError, read_entries

# .env feeds both the app's Config and the GUNICORN_* settings below; real variables win.
load_dotenv(".env", override=False)

# Validate the whole config in the master, before any worker starts: one clear line, no traceback.
# gunicorn reads this file again on SIGHUP; the marker tells that reload from the first start.
_reloading = os.environ.get("MLOPS_GUNICORN_CONFIGURED") == "1"
os.environ["MLOPS_GUNICORN_CONFIGURED"] = "1"
try:
    _config = Config.from_env()
    if _config.api_keys_file and _config.keys_store == "file":
        read_entries(_config.api_keys_file)
except (ConfigError, KeyFileError) as error:
    sys.stderr.write(f"mlops-backend: configuration error: {error}\n")
    if not _reloading or isinstance(error, ConfigError):
        sys.exit(2)
    # A broken keys file on SIGHUP must not take the running gateway down: the new workers log it
    # and accept only API_KEY until the file is fixed (they re-read it when it changes).
    _config = Config.from_env()

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
# Trust X-Forwarded-* only from the proxy in front of us (nginx on the same host by default); the
# app reads the same setting to tell the client's address behind it.
forwarded_allow_ips = ",".join(_config.forwarded_allow_ips)
# Nothing is preloaded in the master, so each worker imports the app after gevent patched it.
preload_app = False

loglevel = _config.log_level.lower()
# The app writes one structured line per request itself (LOG_FORMAT=text|json: key name, model,
# tokens, time to first token), so gunicorn's own access log is off unless asked for.
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
errorlog = "-"
# %({x-request-id}o)s is the id the app put on the response: the same one its own log lines carry.
# fwd= is the client address nginx forwards (X-Forwarded-For), since %(h)s is nginx itself there.
access_log_format = '%(h)s fwd=%({x-forwarded-for}i)s "%(r)s" %(s)s %(B)s %(M)sms rid=%({x-request-id}o)s ua="%(a)s"'
# gunicorn's control socket (a file under $HOME) is not needed to run the gateway; containers
# and read-only homes are simpler without it.
control_socket_disable = True

# Prometheus multiprocess mode: every worker writes its metrics to files in this directory and
# /metrics merges them. It must be empty at start (stale files would be counted) and exist
# before the workers import prometheus_client.
_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if not _reloading:  # on SIGHUP the running workers' files stay: the counts go on
    if not _metrics_dir:
        _metrics_dir = tempfile.mkdtemp(prefix="mlops-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir
        os.environ["MLOPS_OWN_METRICS_DIR"] = "1"
    else:
        os.makedirs(_metrics_dir, exist_ok=True)
        for _stale in glob.glob(os.path.join(_metrics_dir, "*.db")):
            os.remove(_stale)


def child_exit(server, worker):
    """Drop a dead worker's live gauges (active streams) from /metrics; its counters stay counted."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if os.environ.get("MLOPS_OWN_METRICS_DIR") == "1":
        shutil.rmtree(_metrics_dir, ignore_errors=True)


def on_starting(server):
    """Warn once, in the master, when configured limits would be counted per worker."""
    limited = (_config.rate_limit_per_minute or _config.streams_per_key or _config.api_keys_file
               or _config.keys_store == "database")
    if limited and _config.rate_limit_storage.startswith("memory://") and server.cfg.workers > 1:
        logging.getLogger("gunicorn.error").warning(
            "RATE_LIMIT_STORAGE=memory:// with %d workers: each worker counts limits on its own, so a key can "
            "make up to %d times its limit; set RATE_LIMIT_STORAGE=redis://... to share them", server.cfg.workers,
            server.cfg.workers)
