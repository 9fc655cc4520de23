"""The unix socket the `tailor` CNI plugin connects to.

Started and stopped by the agent core:

    server = CniSocketServer("/run/tailor/cni.sock", handler)
    server.start()      # returns at once; a thread accepts connections
    ...
    server.stop()       # stops accepting, waits for requests in flight, removes the socket

One request per connection (tailor.datapath.cni.protocol), each served on its
own thread, so a slow attach for one pod never holds up another pod's ADD.
The socket is created mode 0600 (only root's runtime may wire pods): it is
bound under a temporary name, chmod-ed, then renamed into place, so it is
never reachable with looser permissions. A socket file left by a dead agent
is replaced; one a live agent still answers on is an error.
"""
from __future__ import annotations

import contextlib
import os
import socket
import socketserver
import threading
import time
from collections.abc import Callable

from tailor.datapath.cni import protocol

# A plugin sends its request at once; a connection that doesn't is dropped.
REQUEST_READ_SECONDS = 10.0


class SocketInUse(Exception):
    """Another process is serving on the socket path."""


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = True
    request_queue_size = 512   # a burst of pod starts queues, not fails


class CniSocketServer:
    def __init__(self, path: str | os.PathLike, handler):
        """`handler`: a handler.CniHandler, or any callable request -> response."""
        self.path = os.fspath(path)
        self._handle: Callable[[dict], dict] = getattr(handler, "handle", handler)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._server is not None:
            return
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o755, exist_ok=True)
        self._remove_stale()
        handle = self._handle

        class Connection(socketserver.BaseRequestHandler):
            def handle(self):
                _serve_one(self.request, handle)

        tmp = f"{self.path}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        server = _Server(tmp, Connection, bind_and_activate=False)
        try:
            server.server_bind()
            os.chmod(tmp, 0o600)
            server.server_activate()
            os.rename(tmp, self.path)
        except BaseException:
            server.server_close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        server.server_address = self.path
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="tailor-cni-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()   # joins the connection threads (block_on_close)
        self._thread.join()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def __enter__(self) -> CniSocketServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _remove_stale(self) -> None:
        if not os.path.exists(self.path):
            return
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(self.path)
        except OSError:
            os.unlink(self.path)   # nobody listens: a dead agent's socket (or not a socket)
            return
        finally:
            probe.close()
        raise SocketInUse(f"{self.path} is served by another process")


def _serve_one(conn: socket.socket, handle: Callable[[dict], dict]) -> None:
    try:
        request = protocol.read_message(conn, time.monotonic() + REQUEST_READ_SECONDS)
    except (protocol.ProtocolError, TimeoutError, OSError) as e:
        response = protocol.error(protocol.ERR_DECODE, "bad request from the CNI plugin", str(e))
    else:
        response = handle(request)
    conn.settimeout(REQUEST_READ_SECONDS)
    with contextlib.suppress(OSError):   # the plugin gave up waiting
        conn.sendall(protocol.encode(response))
