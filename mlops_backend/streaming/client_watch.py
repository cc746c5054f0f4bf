"""Notice the moment a client hangs up, while its request is still waiting on Ollama."""

from __future__ import annotations

import socket

from ..errors import ClientGone
from ..upstream.http import gevent_active

_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT


def client_socket(environ):
    """Return the client's socket that gunicorn puts in the WSGI environ, if any."""
    return environ.get("gunicorn.socket") or environ.get("gunicorn.sock")


class ClientWatch:
    """Call `on_gone` from the gevent hub as soon as the client's socket reports end of file.

    A WSGI app only learns of a disconnect when a write fails, which, while Ollama is silent,
    can be a heartbeat interval away; watching the socket for readability notices it at once,
    so the upstream call is cancelled and Ollama stops generating for nobody. A no-op outside
    gevent or without gunicorn's socket in the environ.
    """

    __slots__ = ("gone", "on_gone", "_sock", "_watcher")

    def __init__(self, environ, on_gone):
        self.gone = False
        self.on_gone = on_gone
        self._watcher = None
        sock = client_socket(environ)
        if sock is None or not gevent_active():
            return
        import gevent

        # The real socket under gevent's wrapper: a peek from the hub must never block.
        self._sock = getattr(sock, "_sock", sock)
        self._watcher = gevent.get_hub().loop.io(sock.fileno(), 1)
        self._watcher.start(self._readable)

    def _readable(self):
        try:
            data = self._sock.recv(1, _PEEK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        # Either the client hung up, or it sent bytes early (the next pipelined request):
        # stop watching in both cases, since a readable socket would wake us in a loop.
        self.stop()
        if not data:
            self.gone = True
            self.on_gone()

    def stop(self):
        """Stop watching; call on every exit path."""
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher.close()
            self._watcher = None


def watch_client(environ, stream, step):
    """Run `step()` (a wait on Ollama's answer) while watching the client; return (watch, result).

    On any failure both are released: ClientGone if the client left (its departure interrupted
    the upstream call), otherwise the failure itself. On success the caller owns the watch.
    """
    watch = ClientWatch(environ, stream.interrupt)
    try:
        return watch, step()
    except BaseException:
        watch.stop()
        stream.close()
        if watch.gone:
            raise ClientGone() from None
        raise
