"""`kdpipe confirm`: the sweep's choice and best baseline trained again on fresh seeds, their
paired test gain the one confirmatory figure; seeds the selection saw are refused."""
import subprocess

import pytest

from kdpipe.analysis import confirm
from kdpipe.analysis.confirm import arm_names, fresh_seeds, gap_closed, plan
from kdpipe.core.errors import ConfigError
from tests.project import clean_env, clone, edit_params, read_json, sh

SWEEP = {"seeds": [42, 43, 44, 45, 46],
         "chosen": {"model": "dist", "setting": {"student.lr": 0.003, "distill.dist.beta": 2.0}},
         "best_baseline_model": "student", "best_baseline": {"student.lr": 0.001}}


def test_fresh_seeds_follow_the_sweeps_and_overlapping_ones_are_refused():
    assert fresh_seeds(None, 5, SWEEP["seeds"]) == [47, 48, 49, 50, 51]
    assert fresh_seeds("100,7", 5, SWEEP["seeds"]) == [7, 100]
    with pytest.raises(ConfigError, match="45, 46 were seen by the selection .seeds 42-46."):
        fresh_seeds("45-49", 5, SWEEP["seeds"])
    with pytest.raises(ConfigError, match="expected a range"):
        fresh_seeds("47..51", 5, SWEEP["seeds"])


def test_each_arm_is_an_experiment_of_its_own_params_on_the_fresh_seeds():
    todo = plan(SWEEP, [47, 48])
    chosen, baseline = todo
    assert chosen.startswith("confirm-chosen-dist-47-48-")
    assert baseline.startswith("confirm-baseline-student-47-48-")
    assert todo[chosen] == ['distill.dist.beta=2.0', 'distill.methods=["dist"]',
                            "seeds=[47, 48]", "student.lr=0.003"]
    # plain students: the chosen method rides along (distill.methods may not be empty), at the
    # baseline's recipe
    assert todo[baseline] == ['distill.dist.beta=2.0', 'distill.methods=["dist"]',
                              "seeds=[47, 48]", "student.lr=0.001"]
    control = {**SWEEP, "best_baseline_model": "tfkd",
               "best_baseline": {"student.lr": 0.003, "distill.tfkd.reg_weight": 10.0}}
    assert list(plan(control, [47, 48]).values())[1] == [
        "distill.methods=[\"tfkd\"]", "distill.tfkd.reg_weight=10.0", "seeds=[47, 48]",
        "student.lr=0.003"]
    # another choice is another experiment, never mistaken for one done before
    other = {**SWEEP, "chosen": {**SWEEP["chosen"], "setting": {"distill.dist.beta": 1.0}}}
    assert list(plan(other, [47, 48]))[0] != chosen


def test_a_method_against_its_own_control_is_named_by_what_tells_them_apart():
    assert arm_names(SWEEP) == ("dist", "student")
    control = {**SWEEP, "best_baseline_model": "dist",
               "best_baseline": {**SWEEP["chosen"]["setting"],
                                 "distill.dist.teacher": "shuffled"}}
    control["chosen"] = {**SWEEP["chosen"], "setting": {**SWEEP["chosen"]["setting"],
                                                        "distill.dist.teacher": "trained"}}
    assert arm_names(control) == ("dist (distill.dist.teacher=trained)",
                                  "dist (distill.dist.teacher=shuffled)")


def test_the_gap_closed_is_the_students_way_from_the_baseline_to_the_teacher():
    assert gap_closed(teacher=80.0, chosen=77.0, baseline=74.0) == pytest.approx(0.5)
    assert gap_closed(teacher=80.0, chosen=73.0, baseline=74.0) == pytest.approx(-1 / 6)
    assert gap_closed(teacher=74.0, chosen=75.0, baseline=74.0) is None  # no gap to close


def listed(monkeypatch, executor: dict) -> None:
    """DVC listing the arm confirm-chosen-dist as unfinished, with `executor`."""
    def shown(all_commits, unfinished):
        unfinished["confirm-chosen-dist"] = executor
        return []

    monkeypatch.setattr(confirm, "experiments", shown)


@pytest.mark.parametrize("executor", [{"state": "queued", "name": None},
                                      {"state": "running", "name": "dvc-task"}])
def test_an_arm_still_queued_is_not_started_twice(monkeypatch, tmp_path, executor):
    monkeypatch.chdir(tmp_path)
    listed(monkeypatch, executor)
    with pytest.raises(SystemExit, match="confirm-chosen-dist is queued or running"):
        confirm.run({"confirm-chosen-dist": ["seeds=[47, 48]"]}, queue=False, dry_run=True)


def test_an_arm_a_killed_confirm_left_running_is_run_again(monkeypatch, tmp_path, capsys):
    """DVC lists a `--temp` run killed midway as running for good; under the confirm lock no
    other confirm runs it, so it is started again (its finished stages from the run-cache)."""
    monkeypatch.chdir(tmp_path)
    listed(monkeypatch, {"state": "running", "name": "tempdir"})
    confirm.run({"confirm-chosen-dist": ["seeds=[47, 48]"]}, queue=False, dry_run=True)
    out, err = capsys.readouterr()
    assert "dvc exp run --temp -n confirm-chosen-dist -S seeds=[47, 48]" in out
    assert "stopped before it finished" in err


def test_a_second_confirm_in_one_repository_fails_at_once(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    listed(monkeypatch, {})
    with confirm.one_confirm_at_a_time():  # the first one, still running
        with pytest.raises(SystemExit, match="another `kdpipe confirm` is running"):
            confirm.run({"confirm-chosen-dist": ["seeds=[47, 48]"]}, queue=False, dry_run=True)


def kdpipe(repo, *args):
    return subprocess.run(["python", "-m", "kdpipe.ops.command", *args], cwd=repo,
                          capture_output=True, text=True,
                          env={**clean_env(), "PYTHONPATH": str(repo / "src")})


def test_confirm_trains_both_arms_on_fresh_seeds_and_tests_their_gain(built, tmp_path):
    repo = clone(built, tmp_path / "repo")
    edit_params(repo, {"seeds": [42, 43]})
    sh(["dvc", "repro"], repo)
    sh(["git", "commit", "-qam", "two seeds"], repo)
    for change in ([], ["-S", "distill.kd.temperature=4"]):
        sh(["dvc", "exp", "run", *change], repo)
    assert kdpipe(repo, "sweep", "--no-mlflow").returncode == 0
    sweep = read_json(repo / "reports" / "sweep.json")
    params = (repo / "params.yaml").read_text()

    refused = kdpipe(repo, "confirm", "--seeds", "43-44")
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1].startswith("error: --seeds 43-44: 43 were")

    done = kdpipe(repo, "confirm", "--count", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    result = read_json(repo / "reports" / "confirm.json")
    assert result["seeds"] == [44, 45]
    chosen, base = sweep["chosen"]["model"], sweep["best_baseline_model"]
    assert result["arms"] == {"chosen": chosen, "baseline": base}
    tests = result["test"]
    assert sorted(tests["chosen"]) == sorted(tests["baseline"]) == ["44", "45"]
    diffs = [tests["chosen"][s] - tests["baseline"][s] for s in ("44", "45")]
    assert result["gain"]["mean"] == pytest.approx(sum(diffs) / 2)
    means = [sum(tests[arm].values()) / 2 for arm in ("chosen", "baseline")]
    assert result["gap_closed"] == pytest.approx(gap_closed(result["teacher_test"], *means))
    text = (repo / "reports" / "confirm.md").read_text()
    assert f"The teacher: {result['teacher_test']:.2f}% on test" in text
    assert "Selected on validation (seeds 42-43), confirmed on fresh seeds (44-45)" in text
    assert (repo / "params.yaml").read_text() == params  # the workspace is left as it was

    again = kdpipe(repo, "confirm", "--count", "2", "--no-mlflow")  # nothing to train again
    assert again.returncode == 0 and again.stdout.count("done already") == 2
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    names = {r.info.run_name for r in mlflow.search_runs(
        experiment_names=["knowledge-distillation"], output_format="list")}
    assert {f"{chosen}-44", f"{chosen}-45", "confirm"} <= names
