"""Collecting preference-over-preference labels from people: a small web app (``popalign label``).

Modules, one job each: :mod:`~popalign.label.db` (tables, engine, transactions), :mod:`~.project`
(projects and their settings), :mod:`~.accounts` (annotator tokens, browser sessions),
:mod:`~.sampling` (random and iterative pairs, gold pairs), :mod:`~.counts` (shared counting queries),
:mod:`~.store` (serving pairs, labels, skips, leases, undo), :mod:`~.inputs` (bounded parsing of
request values), :mod:`~.render` (Markdown to sanitised HTML), :mod:`~.guidelines`, :mod:`~.export`
(the PoP label file, the ``datasets`` folder, skips, agreement), :mod:`~.status`, :mod:`~.context`
and :mod:`~.auth` (what the routes share), :mod:`~.downloads`, :mod:`~.app` with
:mod:`~.routes_pages` and :mod:`~.routes_api` (Flask), and :mod:`~.server` (waitress, proxy headers).

Nothing here is imported by ``popalign --help``; Flask, waitress, SQLAlchemy, markdown-it-py and nh3
(the ``label`` extra) are imported when a label command runs. See ``docs/labelling.md``.
"""
