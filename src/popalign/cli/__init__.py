"""The ``popalign`` command line: one module per sub-command, dispatched by :mod:`popalign.cli.main`."""
