"""Fanning out over Slurm: one job per stage with afterok dependencies, each in its own clone
at the commit, sharing results through the DVC remote's run-cache. The jobs' scripts are run
here in order with bash (Slurm's part is only the ordering); tests/test_slurm.py runs them on
a real single-node Slurm."""
import os
import re
import signal
import subprocess
import time

import pytest

from kdpipe.ops.cluster import combinations, experiment_name
from tests.project import clean_env, clone, edit_params, ran_stages, sh

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
    out = subprocess.run(["python", "-m", "kdpipe.ops.cluster", *args, "--dry-run",
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
    assert re.search(r"--dependency=afterok:<check_params>:<prepare>:<teacher_targets>:"
                     r"<train_teacher>$", kd, re.M) and "--kill-on-invalid-dep=yes" in kd
    commit = sh(["git", "rev-parse", "HEAD"], repo).strip()
    assert f"git checkout -q {commit}" in kd and "dvc repro --pull distill@kd-42" in kd
    assert "dvc push --run-cache" in kd and "--dependency" not in scripts["prepare"]
    assert "export KDPIPE_WARM=0" in kd  # a warm process of its own would outlive the job
    checkpoints = repo.parent / "jobs" / "checkpoints" / commit / "kd-distill_kd-42"
    assert f"export KDPIPE_CHECKPOINT_DIR={checkpoints}" in kd


def commit_all(repo, message: str) -> None:
    sh(["git", "commit", "-qam", message], repo)


def uncommitted(repo, env):
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text() + "\n")


def no_tracking_uri(repo, env):
    env.pop("MLFLOW_TRACKING_URI")


def no_remote(repo, env):
    sh(["dvc", "remote", "default", "--unset"], repo)
    commit_all(repo, "no remote")


def untracked_builder(repo, env):
    (repo / "mynet.py").write_text("def build(num_classes):\n    pass\n")
    edit_params(repo, {"teacher": {"arch": "mynet:build", "code": "mynet.py"}})
    commit_all(repo, "a builder, left untracked")


def unpushed(repo, env):
    origin = repo.parent / "origin.git"
    sh(["git", "clone", "-q", "--bare", str(repo), str(origin)], repo)
    sh(["git", "commit", "-q", "--allow-empty", "-m", "not pushed"], repo)
    return ["--git-url", str(origin)]


def outputs_not_pushed(repo, env):
    sh(["dvc", "remote", "modify", "storage", "url", str(repo.parent / "empty-remote")], repo)
    commit_all(repo, "an empty remote")


def multiline_option(repo, env):
    return ["--partition", "gpu\n#SBATCH --mem=1T"]


@pytest.mark.parametrize("change, message", [
    (uncommitted, "uncommitted changes"),
    (no_tracking_uri, "MLFLOW_TRACKING_URI is not set"),
    (no_remote, "no default DVC remote"),
    (untracked_builder, "teacher.code='mynet.py' is not committed"),
    (unpushed, "is on no branch or tag of"),
    (outputs_not_pushed, "the DVC remote lacks"),
    (multiline_option, "--partition 'gpu\\n#SBATCH --mem=1T': an sbatch option value must be"),
])
def test_what_jobs_need_is_checked_before_submitting(built, tmp_path, change, message):
    repo, env = with_remote(built, tmp_path)
    args = change(repo, env) or []
    done = subprocess.run(["python", "-m", "kdpipe.ops.cluster", "submit", "--dry-run", *args],
                          cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode != 0 and message in done.stderr, done.stderr


@pytest.mark.slow  # ~3 min; tests/test_slurm.py runs the same jobs on a real Slurm
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
    jobs = tmp_path / "jobs"  # every job cleaned up its clone and, done, its checkpoints
    assert list(jobs.iterdir()) == [jobs / "checkpoints"]
    assert not [p for p in (jobs / "checkpoints").rglob("*") if p.is_file()]
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


def test_a_sweep_parses_lists_and_quotes_as_dvc_does():
    assert combinations(["seeds=[42,43]", "distill.kd.temperature=2,4", "a='x,y'"]) == [
        ["seeds=[42,43]", "distill.kd.temperature=2", "a='x,y'"],
        ["seeds=[42,43]", "distill.kd.temperature=4", "a='x,y'"]]


def test_every_sweep_point_has_a_name_of_its_own():
    assert experiment_name(["a=11"]) != experiment_name(["a1=1"])
    long = "distill.kd.soft_target_weight=0.5 distill.kd.ce_weight=0.5 student.lr=0.001"
    names = {experiment_name([*long.split(), f"distill.kd.temperature={t}"]) for t in (1, 2)}
    assert len(names) == 2 and all(n.startswith("kd-exp-distill.kd.soft_target_weight_0.5")
                                   for n in names)


def test_sweep_jobs_run_and_push_an_experiment(built, tmp_path):
    repo, env = with_remote(built, tmp_path)
    scripts = dry_run(repo, env, "sweep", "-S", "distill.kd.temperature=1,4")
    assert len(scripts) == 2
    body = next(iter(scripts.values()))
    name = experiment_name(["distill.kd.temperature=1"])
    assert name.startswith("kd-exp-distill.kd.temperature_1-")
    assert f"dvc exp run --pull -n {name} -S distill.kd.temperature=1" in body
    assert f"dvc exp push {repo} {name}" in body
    # it pushes what it ran, after running it, to the repository it was submitted from
    assert body.index("dvc exp run --pull") < body.index(f"dvc exp push {repo}")


def test_a_killed_teacher_job_resumes_from_its_checkpoint_when_resubmitted(built, tmp_path):
    """As Slurm ends a job at its time limit or on scancel: SIGTERM to all its processes."""
    repo, env = with_remote(built, tmp_path)
    edit_params(repo, {"teacher": {"epochs": 4}})
    commit_all(repo, "a longer teacher")
    body = dry_run(repo, env, "submit")["train_teacher"]
    checkpoints = tmp_path / "jobs" / "checkpoints" / sh(["git", "rev-parse", "HEAD"], repo
                                                         ).strip() / "kd-train_teacher"
    job = subprocess.Popen(["bash", "-c", body], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (checkpoints / "teacher-42.pt").exists():  # after the teacher's first epoch
        assert job.poll() is None and time.monotonic() < deadline, job.stdout.read()
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGTERM)
    assert job.wait(timeout=60) != 0
    assert [p.name for p in (tmp_path / "jobs").iterdir()] == ["checkpoints"]  # clone gone
    again = subprocess.run(["bash", "-c", body], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert re.search(r"teacher-42: resuming after epoch [123] of 4", again.stdout + again.stderr)
    assert not checkpoints.exists()  # the job succeeded: its checkpoints are gone


def test_a_file_is_committed_in_git_or_through_a_dvc_file_of_its_own_or_a_folder_above():
    from kdpipe.ops.cluster import committed

    assert committed("teachers/deepnn.pt", {"teachers/deepnn.pt"})
    assert committed("teachers/deepnn.pt", {"teachers/deepnn.pt.dvc"})
    assert committed("teachers/big/deepnn.pt", {"teachers.dvc"})
    assert not committed("teachers/deepnn.pt", {"teachers/other.pt.dvc", "deepnn.pt.dvc"})


def test_submit_hands_sbatch_the_script_and_keeps_the_job_id(tmp_path, monkeypatch):
    """With a fake `sbatch` on PATH: the script goes to its stdin, `--parsable`'s
    "<id>;<cluster>" gives the id later jobs depend on, and a refusal ends with one line."""
    from kdpipe.ops.cluster import submit

    fake = tmp_path / "sbatch"
    fake.write_text(f'#!/bin/sh\n[ "$1" = --parsable ] || exit 3\ncat > {tmp_path}/script\n'
                    'if grep -q refuse "' f'{tmp_path}/script"; then echo "bad partition" >&2; '
                    'exit 1; fi\necho "4242;cluster1"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    jobs: dict[str, str] = {}
    assert submit("#!/bin/bash\necho prepare\n", False, jobs, "prepare") == "4242"
    assert jobs == {"prepare": "4242"}
    assert (tmp_path / "script").read_text() == "#!/bin/bash\necho prepare\n"
    with pytest.raises(SystemExit, match="error: sbatch refused train_teacher: bad partition"):
        submit("#!/bin/bash\n# refuse\n", False, jobs, "train_teacher")
