"""Run CPU-bound work (a document's extraction) off the worker's event loop.

Under gunicorn's gevent workers every request shares one OS thread: a PDF parsed for seconds
there would stall every stream of the worker. gevent's thread pool runs it in a real thread, so
the loop keeps serving (the GIL is handed over every few milliseconds). Elsewhere (threaded
servers, the tests' in-process app) the work runs where it is called.
"""

from __future__ import annotations


def run_blocking(function, *args):
    try:
        from gevent import get_hub, monkey
    except ImportError:
        return function(*args)
    if not monkey.is_module_patched("threading"):
        return function(*args)
    return get_hub().threadpool.apply(function, args)
