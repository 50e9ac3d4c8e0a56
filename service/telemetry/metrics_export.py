"""The /metrics endpoint: a small HTTP server on its own thread, from one process's registry or,
with worker processes, from the directory every worker writes its values to.

    server = serve_metrics("127.0.0.1:9464", multiprocess_dir)   # the supervisor, or a single process
    worker_exited(pid)                                            # a worker is gone: drop its live gauges
    server.close()
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app, multiprocess
from prometheus_client.exposition import ThreadingWSGIServer

# Set by the supervisor in each worker's environment; a worker never serves /metrics itself.
WORKER_INDEX_ENV = "TOLLWAY_WORKER_INDEX"
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

# The multiprocess directories serve_metrics serves in this process (a supervisor has one).
_served_dirs: list[str] = []

_INDEX = (b"<!doctype html><html><head><title>Tollway metrics</title></head>"
          b'<body><h1>Tollway</h1><p><a href="/metrics">/metrics</a></p></body></html>\n')

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class MetricsListenError(OSError):
    """The metrics address cannot be bound; the message names it and the reason."""


def in_worker(environ: Mapping[str, str] = os.environ) -> bool:
    return bool(environ.get(WORKER_INDEX_ENV))


class MetricsServer:
    """A running /metrics endpoint."""

    def __init__(self, httpd: ThreadingWSGIServer, thread: threading.Thread, multiprocess_dir: str | None) -> None:
        self._httpd = httpd
        self._thread = thread
        self._multiprocess_dir = multiprocess_dir

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
        if self._multiprocess_dir in _served_dirs:
            _served_dirs.remove(self._multiprocess_dir)


class _QuietHandler(WSGIRequestHandler):
    # A line on stderr per scrape is noise; the gateway's own log says where metrics are served.
    def log_message(self, format: str, *args: Any) -> None:
        pass


def metrics_app(registry: CollectorRegistry) -> WsgiApp:
    """/metrics from registry, / a link to it, anything else 404."""
    exposition = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            return exposition(environ, start_response)  # type: ignore[no-any-return]
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [_INDEX]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: metrics are at /metrics\n"]

    return app


def multiprocess_registry(multiprocess_dir: str) -> CollectorRegistry:
    """A registry that reads what every process wrote to multiprocess_dir."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
    return registry


def serve_metrics(listen: str, multiprocess_dir: str | None,
                  registry: CollectorRegistry | None = None) -> MetricsServer:
    """Serve /metrics on listen (HOST:PORT, IPv6 in brackets) from a thread of this process.

    With multiprocess_dir, the values every process wrote there (summed per the metric's
    mode); without, registry (this process's GatewayMetrics.registry)."""
    if multiprocess_dir is not None:
        registry = multiprocess_registry(multiprocess_dir)
    elif registry is None:
        raise ValueError("serve_metrics needs a registry or a multiprocess directory")
    host, _, port_text = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        family = socket.getaddrinfo(host, int(port_text), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    except (OSError, ValueError) as exc:
        raise MetricsListenError(f"cannot serve metrics on {listen}: cannot resolve {host!r}") from exc
    server_class = type("MetricsHTTPServer", (ThreadingWSGIServer,), {"address_family": family})
    try:
        httpd: ThreadingWSGIServer = make_server(host, int(port_text), metrics_app(registry), server_class,
                                                 _QuietHandler)
    except OSError as exc:
        raise MetricsListenError(f"cannot serve metrics on {listen}: {(exc.strerror or str(exc)).lower()}") from None
    thread = threading.Thread(target=httpd.serve_forever, name="tollway-metrics", daemon=True)
    thread.start()
    if multiprocess_dir is not None:
        _served_dirs.append(multiprocess_dir)
    return MetricsServer(httpd, thread, multiprocess_dir)


def worker_exited(pid: int, multiprocess_dir: str | None = None) -> None:
    """A worker process is gone: its live gauges (livesum, livemax) stop counting. The directory is
    multiprocess_dir, else the one this process serves (serve_metrics), else PROMETHEUS_MULTIPROC_DIR."""
    directory = multiprocess_dir or (_served_dirs[-1] if _served_dirs else os.environ.get(MULTIPROC_DIR_ENV))
    if directory:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


class WorkersMetrics:
    """The supervisor's side of `--workers N` with metrics: a fresh private directory that every
    worker writes its values to (PROMETHEUS_MULTIPROC_DIR in each worker's environment), served
    on listen as their sums. Fresh at each start, so values of an earlier run never add in."""

    def __init__(self, listen: str) -> None:
        self.directory = tempfile.mkdtemp(prefix="tollway-metrics-")
        try:
            self.server = serve_metrics(listen, self.directory)
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise

    def worker_exited(self, pid: int) -> None:
        worker_exited(pid, self.directory)

    def close(self) -> None:
        self.server.close()
        shutil.rmtree(self.directory, ignore_errors=True)
