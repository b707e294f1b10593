"""Putting it together: open the database and the dataset, build the app, serve it with waitress.

``build_context`` is what ``popalign label serve`` does before listening; ``start_server`` runs the
same production server (waitress, a thread pool) in a background thread and returns a handle to stop
it, for tests and notebooks.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from popalign.label.app import LabelContext, create_app
from popalign.label.db import make_engine
from popalign.label.project import LabelSettings, open_project
from popalign.label.sampling import make_sampler
from popalign.label.store import LabelStore

DEFAULT_THREADS = 8


def build_context(
    db: str | Path,
    prefs: str | Path,
    settings: LabelSettings | None = None,
    *,
    split: str | None = None,
    columns: str | None = None,
    threads: int = DEFAULT_THREADS,
) -> LabelContext:
    """Load ``prefs``, open (or create) the database ``db`` and fix or check the project settings."""
    from popalign.data.load import load_preferences

    settings = settings or LabelSettings()
    settings.validate()  # before reading a large dataset
    overrides: dict[str, Any] = {}
    if split is not None:
        overrides["split"] = split
    if columns:
        overrides["columns"] = columns
    table, report = load_preferences(prefs, **overrides)
    engine = make_engine(db, pool_size=threads + 2)
    project = open_project(engine, settings, report.source, table.fingerprint(), len(table))
    margins = table.margins if table.has_scores else None
    sampler = make_sampler(project, list(table.ids), margins)
    return LabelContext(store=LabelStore(engine, project, sampler), project=project, table=table)


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

        self.server.trigger.pull_trigger(_close_all)
        self.thread.join(timeout)
        self.server.task_dispatcher.shutdown(timeout=timeout)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def make_server(app: Any, host: str = "127.0.0.1", port: int = 8000, threads: int = DEFAULT_THREADS) -> Any:
    """A waitress server bound to ``host:port`` (``port=0``: a free one); not yet running."""
    from waitress.server import create_server

    try:
        return create_server(app, host=host, port=port, threads=threads, ident="popalign-label")
    except OSError as exc:
        from popalign.errors import PopalignError

        raise PopalignError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def server_url(server: Any) -> str:
    host = server.effective_host
    host = f"[{host}]" if ":" in str(host) else host
    return f"http://{host}:{server.effective_port}"


def start_server(
    ctx: LabelContext, host: str = "127.0.0.1", port: int = 0, threads: int = DEFAULT_THREADS
) -> RunningServer:
    """Serve ``ctx`` on a background thread; stop with ``.stop()`` or use as a context manager."""
    server = make_server(create_app(ctx), host, port, threads)
    thread = threading.Thread(target=server.run, name="popalign-label-server", daemon=True)
    thread.start()
    return RunningServer(server_url(server), server, thread)
