"""The `kdpipe` console command: every subcommand runs its tool and answers --help."""
import subprocess
import sys
from pathlib import Path

import pytest

from kdpipe.ops.command import COMMANDS

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


def test_the_strong_recipe_is_valid_params_and_runs_as_one_experiment(monkeypatch):
    from tests.conftest import ROOT

    monkeypatch.chdir(ROOT)
    done = subprocess.run([str(KDPIPE), "recipe", "strong", "--dry-run"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("dvc exp run -n strong -S data.views=8 ")
    assert "-S teacher.schedule=cosine" in done.stdout and "-S student.epochs=40" in done.stdout


def test_a_recipe_carries_a_named_experiment_with_more_overrides(monkeypatch):
    from tests.conftest import ROOT

    monkeypatch.chdir(ROOT)
    done = subprocess.run([str(KDPIPE), "recipe", "strong", "--name", "strong-kd", "--dry-run",
                           "--", "-S", "distill.methods=[kd]"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("dvc exp run -n strong-kd -S data.views=8 ")
    assert done.stdout.rstrip().endswith("-S 'distill.methods=[kd]'")


def test_a_recipe_with_a_misspelt_key_fails_before_dvc_starts(tmp_path, monkeypatch):
    from kdpipe.core.errors import ConfigError
    from kdpipe.ops.recipes import overrides
    from tests.conftest import ROOT

    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "typo.yaml").write_text("teacher.epoch: 40\n")
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^teacher.epoch: unknown key \(did you mean 'epochs'"):
        overrides("typo")


def test_every_recipe_is_valid_and_the_patient_ones_keep_the_strong_teacher(monkeypatch):
    """Patient schedules vary the students only: the teacher's params (and views) are the
    strong recipe's, so DVC's run-cache restores it instead of training it again."""
    from kdpipe.ops.recipes import overrides
    from tests.conftest import ROOT

    monkeypatch.chdir(ROOT)
    recipes = {p.stem: dict(s.split("=", 1) for s in overrides(p.stem))
               for p in (ROOT / "recipes").glob("*.yaml")}
    teacher = {k: v for k, v in recipes["strong"].items() if k.startswith("teacher.")}
    assert teacher["teacher.views"] == "8"
    for n in (40, 100, 200):
        patient = recipes[f"patient-{n}"]
        assert {k: v for k, v in patient.items() if k.startswith("teacher.")} == teacher
        assert patient["student.epochs"] == patient["data.views"] == str(n)  # a view per epoch
