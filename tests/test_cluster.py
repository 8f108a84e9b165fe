"""Fanning out over Slurm: one job per stage with afterok dependencies, each in its own clone
at the commit, sharing results through the DVC remote's run-cache. The jobs' scripts are run
here in order with bash (Slurm's part is only the ordering); tests/test_slurm.py runs them on
a real single-node Slurm."""
import os
import re
import subprocess

import pytest

from kdpipe.cluster import combinations
from tests.project import clean_env, clone, ran_stages, sh

STAGES = ["check_params", "prepare", "train_teacher", "train_student@42", "teacher_targets",
          "distill@kd-42", "distill@cosine-42", "distill@hint-42", "compare", "export"]


def with_remote(built, tmp_path):
    """The built project with a local-folder remote holding what its committed lock names."""
    repo = clone(built, tmp_path / "head")
    sh(["dvc", "remote", "add", "-d", "storage", str(tmp_path / "dvc-remote")], repo)
    sh(["git", "commit", "-qam", "a shared remote"], repo)
    sh(["dvc", "push", "--run-cache"], repo)
    env = {**clean_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'shared.db'}",
           "PYTHONPATH": str(repo / "src")}
    return repo, env


def dry_run(repo, env, *args) -> dict[str, str]:
    out = subprocess.run(["python", "-m", "kdpipe.cluster", *args, "--dry-run",
                          "--workdir", str(repo.parent / "jobs")], cwd=repo, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    parts = re.split(r"^# --- (\S+)\n", out.stdout, flags=re.M)[1:]
    return {name: body.split("\n\n")[0] for name, body in zip(parts[::2], parts[1::2])}


def test_each_stage_is_a_job_after_the_jobs_of_its_inputs(built, tmp_path):
    repo, env = with_remote(built, tmp_path)
    scripts = dry_run(repo, env, "submit", "--partition", "gpu", "--gres", "gpu:1")
    assert sorted(scripts) == sorted(STAGES)
    kd = scripts["distill@kd-42"]
    assert "#SBATCH --partition=gpu" in kd and "#SBATCH --gres=gpu:1" in kd
    assert re.search(r"--dependency=afterok:<prepare>:<teacher_targets>:<train_teacher>$", kd,
                     re.M) and "--kill-on-invalid-dep=yes" in kd
    commit = sh(["git", "rev-parse", "HEAD"], repo).strip()
    assert f"git checkout -q {commit}" in kd and "dvc repro --pull distill@kd-42" in kd
    assert "dvc push --run-cache" in kd and "--dependency" not in scripts["prepare"]


@pytest.mark.parametrize("change, message", [
    (lambda repo, env: (repo / "params.yaml").write_text((repo / "params.yaml").read_text()
                                                         + "\n"), "uncommitted changes"),
    (lambda repo, env: env.pop("MLFLOW_TRACKING_URI"), "MLFLOW_TRACKING_URI is not set"),
    (lambda repo, env: sh(["dvc", "remote", "default", "--unset"], repo)
     or sh(["git", "commit", "-qam", "no remote"], repo), "no default DVC remote"),
])
def test_what_jobs_need_is_checked_before_submitting(built, tmp_path, change, message):
    repo, env = with_remote(built, tmp_path)
    change(repo, env)
    done = subprocess.run(["python", "-m", "kdpipe.cluster", "submit", "--dry-run"], cwd=repo,
                          env=env, capture_output=True, text=True)
    assert done.returncode != 0 and message in done.stderr


def test_jobs_share_results_and_the_head_restores_everything(built, tmp_path):
    """Fresh results (a second seed) computed by the jobs, restored on the head machine."""
    repo, env = with_remote(built, tmp_path)
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text().replace(
        "seeds:\n- 42", "seeds:\n- 42\n- 43"))
    sh(["git", "commit", "-qam", "a second seed"], repo)
    scripts = dry_run(repo, env, "submit")
    ran = {}
    for name, body in scripts.items():  # the dry run lists them upstream first
        done = subprocess.run(["bash", "-c", body], env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{name}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        ran[name] = ran_stages(done.stdout)
    # A job runs at most its own stage: upstream outputs come from the remote. The stages the
    # committed lock already holds restore too; the new seed's, compare and check_params run.
    assert all(ran[name] in ([], [name]) for name in scripts), ran
    shipped = ran["export"] == ["export"]  # only if the second seed changed the chosen student
    assert [name for name in scripts if ran[name]] == [
        name for name in scripts if name.endswith("43") or name in ("compare", "check_params")
        or (name == "export" and shipped)]
    assert not list((tmp_path / "jobs").iterdir())  # every job cleaned up its clone
    output = sh(["dvc", "repro", "--pull"], repo, env)
    assert ran_stages(output) == [] and "is cached - skipping run" in output
    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["knowledge-distillation"], output_format="list")
    assert sorted(r.info.run_name for r in runs) == sorted(  # a run per stage the jobs ran
        ["compare"] + [f"{m}-43" for m in ("student", "kd", "cosine", "hint")]
        + ["export"] * shipped)
    model_id = runs[0].outputs.model_outputs[0].model_id if runs[0].outputs.model_outputs \
        else runs[1].outputs.model_outputs[0].model_id
    assert mlflow.pytorch.load_model(f"models:/{model_id}")  # artifacts outlived the clones


def test_a_sweep_is_one_job_per_combination():
    assert combinations(["distill.kd.temperature=1,4", "student.epochs=5"]) == [
        ["distill.kd.temperature=1", "student.epochs=5"],
        ["distill.kd.temperature=4", "student.epochs=5"]]


def test_sweep_jobs_run_and_push_an_experiment(built, tmp_path):
    repo, env = with_remote(built, tmp_path)
    scripts = dry_run(repo, env, "sweep", "-S", "distill.kd.temperature=1,4")
    assert len(scripts) == 2
    body = next(iter(scripts.values()))
    assert "dvc exp run --pull -n kd-exp-distill.kd.temperature1" in body
    assert f"dvc exp push {repo}" in body
    assert os.path.isabs(str(repo))
