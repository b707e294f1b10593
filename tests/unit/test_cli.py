"""The command line: every sub-command has help with examples, and help never loads torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from popalign.cli.main import COMMANDS, build_parser, main


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys; from popalign.cli.main import build_parser; build_parser(); "
        "mods = ('torch', 'transformers', 'datasets', 'pandas', 'matplotlib'); "
        "heavy = [m for m in mods if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("name", [name for name, _ in COMMANDS])
def test_every_command_has_help_with_examples(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert "example" in capsys.readouterr().out.lower()


def test_top_level_help_lists_every_command():
    text = build_parser().format_help()
    for name, _ in COMMANDS:
        assert name in text


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "COMMAND" in capsys.readouterr().out
