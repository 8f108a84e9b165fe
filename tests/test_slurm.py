"""`kdpipe.ops.cluster submit` on a real single-node Slurm (tests/slurm.sh; Debian's slurm-wlm and
munge): the quick pipeline with 2 seeds, one job per stage, results shared through a
local-folder DVC remote, runs recorded on the team's MLflow server (PostgreSQL, basic-auth).
Every job COMPLETED, the head has nothing left to run, MLflow holds a run per stage. Slow:
`pytest -m slow tests/test_slurm.py -s` prints the wall time with 1 and with 2 CPU slots.
And a failing job: Slurm cancels every job downstream of it."""
import re
import shutil
import time

import pytest

from tests.conftest import ROOT
from tests.project import QUICK, clean_env, copy_project, edit_params, exports, ran_stages, sh
from tests.test_server import ADMIN, PASSWORD, postgres, server, server_runs  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not shutil.which("slurmctld"), reason="Slurm is not installed (apt-get install slurm-wlm "
                                          "munge)")]


@pytest.fixture
def slurm(request) -> dict:
    """A single-node Slurm with `request.param` CPU slots; its SLURM_CONF."""
    script = str(ROOT / "tests" / "slurm.sh")
    out = sh(["bash", script, "start", str(request.param)], ROOT)
    values = exports(out)
    yield {**values, "slots": request.param}
    sh(["bash", script, "stop", values["KDPIPE_TEST_SLURM_DIR"]], ROOT)


def job_states(env: dict, ids: list[str]) -> dict[str, str]:
    states = {}
    for job in ids:
        out = sh(["scontrol", "show", "job", job], ROOT, env)
        states[job] = out.split("JobState=")[1].split()[0]
    return states


@pytest.mark.parametrize("slurm", [1, 2], indirect=True, ids=["1 slot", "2 slots"])
def test_submit_runs_every_stage_as_a_slurm_job(tmp_path, server, slurm):  # noqa: F811

    head = copy_project(tmp_path / "head")
    experiment = f"slurm-{slurm['slots']}"
    edit_params(head, {**QUICK, "seeds": [42, 43], "mlflow": {"experiment": experiment}})
    sh(["dvc", "remote", "add", "-d", "storage", str(tmp_path / "dvc-remote")], head)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "2 seeds"], head)
    env = {**clean_env(), "SLURM_CONF": slurm["SLURM_CONF"], "MLFLOW_TRACKING_URI": server,
           "MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": PASSWORD,
           "PYTHONPATH": str(head / "src")}
    start = time.monotonic()
    out = sh(["python", "-m", "kdpipe.ops.cluster", "submit", "--workdir", str(tmp_path / "jobs"),
              "--logs", str(tmp_path / "logs")], head, env)
    jobs = re.findall(r"^(\d+)  \S+$", out, flags=re.M)  # "<job id>  <stage>" per job
    assert len(jobs) == 14  # check_params, prepare, teacher, 2 students, targets, 6, compare,
    # export
    while sh(["squeue", "-h"], ROOT, env).strip():
        assert time.monotonic() - start < 900, sh(["squeue"], ROOT, env)
        time.sleep(1)
    wall = time.monotonic() - start
    states = job_states(env, jobs)
    logs = "\n".join(p.read_text()[-600:] for p in sorted((tmp_path / "logs").iterdir()))
    assert set(states.values()) == {"COMPLETED"}, f"{states}\n{logs}"
    print(f"\n{slurm['slots']} Slurm CPU slot(s): 14 jobs done in {wall:.0f} s")

    assert ran_stages(sh(["dvc", "repro", "--pull"], head, env)) == []  # all from run-cache
    assert "up to date" in sh(["dvc", "status"], head, env)
    runs = server_runs(server, experiment)
    names = sorted(r.info.run_name for r in runs)
    assert names == sorted(["prepare", "teacher-42", "teacher_targets", "compare", "export", *(
        f"{m}-{s}" for s in (42, 43) for m in ("student", "kd", "cosine", "hint"))]), names


@pytest.mark.parametrize("slurm", [2], indirect=True, ids=["2 slots"])
def test_a_failed_job_cancels_every_job_downstream_of_it(tmp_path, slurm):
    head = copy_project(tmp_path / "head")
    edit_params(head, {**QUICK, "data": {**QUICK["data"], "source": "missing.tar.gz"}})
    sh(["dvc", "remote", "add", "-d", "storage", str(tmp_path / "dvc-remote")], head)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "no data"], head)
    env = {**clean_env(), "SLURM_CONF": slurm["SLURM_CONF"], "PYTHONPATH": str(head / "src"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    out = sh(["python", "-m", "kdpipe.ops.cluster", "submit", "--workdir", str(tmp_path / "jobs"),
              "--logs", str(tmp_path / "logs")], head, env)
    stages = dict(re.findall(r"^(\d+)  (\S+)$", out, flags=re.M))  # job id -> stage
    deadline = time.monotonic() + 600
    while sh(["squeue", "-h"], ROOT, env).strip():
        assert time.monotonic() < deadline, sh(["squeue"], ROOT, env)
        time.sleep(1)
    states = {stages[job]: state for job, state in job_states(env, list(stages)).items()}
    assert states["prepare"] == "FAILED", states  # it cannot read its data
    downstream = set(states) - {"prepare", "check_params"}  # every other stage needs its data
    assert len(downstream) == 7 and {states[s] for s in downstream} == {"CANCELLED"}, states
