"""The `kdpipe` console command: every subcommand runs its tool and answers --help."""
import subprocess
import sys
from pathlib import Path

import pytest

from kdpipe.command import COMMANDS

KDPIPE = Path(sys.executable).parent / "kdpipe"  # installed by `pip install -e .`


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_subcommand_answers_help(command):
    done = subprocess.run([str(KDPIPE), command, "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:") and "--help" in done.stdout


def test_an_unknown_subcommand_is_refused_naming_the_choices():
    done = subprocess.run([str(KDPIPE), "swep"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "invalid choice: 'swep'" in done.stderr and "sweep" in done.stderr
