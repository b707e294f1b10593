"""Putting it together: open the database and the dataset, build the app, serve it with waitress.

``build_context`` is what ``popalign label serve`` does before listening; ``start_server`` runs the
same production server (waitress, a thread pool) in a background thread and returns a handle to stop
it, for tests and notebooks.

Behind a reverse proxy, ``trusted_proxy`` (the proxy's addresses, comma-separated, or ``*``) makes
the server believe those peers' ``X-Forwarded-Proto``, ``X-Forwarded-Host`` and ``X-Forwarded-For``
(parsed by waitress's own proxy-header middleware) and drop those headers from anyone else: cookies
then get ``Secure`` and the same-origin check compares with the host the browser used.

Waitress's "Task queue depth" warning (one per queued request) is folded into one line per
:data:`QUEUE_LOG_EVERY_S`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from popalign.label.app import create_app
from popalign.label.context import LabelContext
from popalign.label.db import make_engine
from popalign.label.project import DEFAULT_PROJECT, LabelSettings, open_project
from popalign.label.sampling import gold_pairs, make_sampler
from popalign.label.store import LabelStore

DEFAULT_THREADS = 8
PROXY_HEADERS = {"x-forwarded-proto", "x-forwarded-host", "x-forwarded-for"}
QUEUE_LOG_EVERY_S = 10.0


def build_context(
    db: str | Path,
    prefs: str | Path,
    settings: LabelSettings | None = None,
    *,
    split: str | None = None,
    columns: str | None = None,
    threads: int = DEFAULT_THREADS,
    project: str = DEFAULT_PROJECT,
    guidelines: str | Path | None = None,
) -> LabelContext:
    """Load ``prefs``, open (or create) the database ``db`` and fix or check the project's settings."""
    from popalign.data.load import load_preferences
    from popalign.errors import PopalignError
    from popalign.label.guidelines import read_guidelines

    settings = settings or LabelSettings()
    settings.validate()  # before reading a large dataset
    text = None if guidelines is None else read_guidelines(guidelines)
    overrides: dict[str, Any] = {}
    if split is not None:
        overrides["split"] = split
    if columns:
        overrides["columns"] = columns
    table, report = load_preferences(prefs, **overrides)
    if settings.gold_fraction and not table.has_scores:
        raise PopalignError(
            f"gold pairs need scored data (score_chosen, score_rejected); {report.source} has none"
        )
    engine = make_engine(db, pool_size=threads + 2)
    proj = open_project(engine, settings, report.source, table.fingerprint(), len(table), name=project)
    margins = table.margins if table.has_scores else None
    sampler = make_sampler(proj, list(table.ids), margins)
    gold = (
        gold_pairs(list(table.ids), margins, proj.seed) if proj.gold_fraction and margins is not None else []
    )
    store = LabelStore(engine, proj, sampler, gold=gold)
    return LabelContext(store=store, project=proj, table=table, guidelines=text)


class QueueDepthSummary(logging.Filter):
    """Lets one "Task queue depth" record through per ``every_s``, saying the deepest queue since."""

    def __init__(self, every_s: float = QUEUE_LOG_EVERY_S) -> None:
        super().__init__()
        self.every_s, self.last, self.deepest, self.folded = every_s, float("-inf"), 0, 0
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        depth = record.args[0] if isinstance(record.args, tuple) and record.args else 0
        with self.lock:
            self.deepest = max(self.deepest, int(depth))
            self.folded += 1
            now = time.monotonic()
            if now - self.last < self.every_s:
                return False
            record.msg = (
                "requests are waiting for a free thread: up to %d queued (%d reports folded into this line)"
            )
            record.args = (self.deepest, self.folded)
            self.last, self.deepest, self.folded = now, 0, 0
            return True


def _quiet_queue_log() -> None:
    queue_log = logging.getLogger("waitress.queue")
    if not any(isinstance(f, QueueDepthSummary) for f in queue_log.filters):
        queue_log.addFilter(QueueDepthSummary())


@dataclass
class RunningServer:
    """A waitress server on a background thread; ``url`` is where it listens."""

    url: str
    server: Any
    thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        # Close every socket from inside the server's own loop thread, then let the loop end.
        def _close_all() -> None:
            for channel in list(self.server._map.values()):
                channel.close()

        try:
            self.server.trigger.pull_trigger(_close_all)
        except OSError:
            # The trigger's pipe is closed (its loop saw it end), so nothing can wake the loop: close the
            # channels from here; the loop ends at its next poll, when its map is empty.
            _close_all()
        self.thread.join(timeout)
        self.server.task_dispatcher.shutdown(timeout=timeout)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def trust_proxies(app: Any, addresses: str) -> Any:
    """``app`` behind waitress's proxy-header middleware for the peers in ``addresses`` (comma-separated
    IPs, or ``*``); every other peer's forwarded headers are removed."""
    from waitress.proxy_headers import proxy_headers_middleware

    trusted = {a.strip() for a in addresses.split(",") if a.strip()}
    believe = proxy_headers_middleware(app, trusted_proxy="*", trusted_proxy_headers=PROXY_HEADERS)
    clear = proxy_headers_middleware(app, trusted_proxy=None, clear_untrusted=True)

    def dispatch(environ: dict, start_response: Any) -> Any:
        peer = environ.get("REMOTE_ADDR")
        return (believe if "*" in trusted or peer in trusted else clear)(environ, start_response)

    return dispatch


def make_server(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    threads: int = DEFAULT_THREADS,
    trusted_proxy: str | None = None,
) -> Any:
    """A waitress server bound to ``host:port`` (``port=0``: a free one); not yet running."""
    from waitress.server import create_server

    from popalign.errors import PopalignError

    _quiet_queue_log()
    # With proxies named, our dispatcher believes or clears the headers, so waitress must not clear
    # them first; without, waitress clears them for everyone.
    if trusted_proxy:
        app = trust_proxies(app, trusted_proxy)
    try:
        return create_server(
            app,
            host=host,
            port=port,
            threads=threads,
            ident="popalign-label",
            clear_untrusted_proxy_headers=not trusted_proxy,
        )
    except OSError as exc:
        raise PopalignError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def server_url(server: Any) -> str:
    host = server.effective_host
    host = f"[{host}]" if ":" in str(host) else host
    return f"http://{host}:{server.effective_port}"


def start_server(
    ctx: LabelContext,
    host: str = "127.0.0.1",
    port: int = 0,
    threads: int = DEFAULT_THREADS,
    trusted_proxy: str | None = None,
) -> RunningServer:
    """Serve ``ctx`` on a background thread; stop with ``.stop()`` or use as a context manager."""
    server = make_server(create_app(ctx), host, port, threads, trusted_proxy)
    thread = threading.Thread(target=server.run, name="popalign-label-server", daemon=True)
    thread.start()
    return RunningServer(server_url(server), server, thread)
