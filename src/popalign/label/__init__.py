"""Collecting preference-over-preference labels from people: a small web app (``popalign label``).

Modules, one job each: :mod:`~popalign.label.db` (tables, engine, transactions), :mod:`~.accounts`
(annotator tokens), :mod:`~.project` (settings fixed per database), :mod:`~.sampling` (random and
iterative pairs), :mod:`~.store` (serving pairs, recording labels, undo), :mod:`~.export` (the PoP label
file, agreement), :mod:`~.status`, :mod:`~.render` (text to display blocks), :mod:`~.app` with
:mod:`~.routes_pages` and :mod:`~.routes_api` (Flask), and :mod:`~.server` (waitress).

Nothing here is imported by ``popalign --help``; Flask, waitress and SQLAlchemy (the ``label`` extra)
are imported when a label command runs. See ``docs/labelling.md``.
"""
