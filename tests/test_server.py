"""A team's MLflow: `mlflow server` on PostgreSQL with basic-auth and artifacts proxied by the
server. The pipeline records into it (runs, models, lineage, registry), a model loads back
through it, a wrong password stops a stage before any work, and parallel queued experiments
write to it without errors, and concurrent compare runs agree on the experiment and the alias."""
import multiprocessing
import os
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.project import (
    clean_env,
    clone,
    exports,
    ran_stages,
    sh,
    stop_server,
    wait_for_server,
)
from tests.test_safety import closed_port

ADMIN, PASSWORD = "admin", "kd-test-password-1"


@pytest.fixture(scope="module")
def postgres():
    """`.ci/run` starts PostgreSQL and exports its URI; otherwise start one here."""
    if os.environ.get("KDPIPE_TEST_POSTGRES"):
        yield os.environ["KDPIPE_TEST_POSTGRES"]
        return
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        pytest.skip("PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb)")
    out = sh(["bash", str(ROOT / "tests" / "postgres.sh"), "start"], ROOT)
    values = exports(out)
    yield values["KDPIPE_TEST_POSTGRES"]
    sh(["bash", str(ROOT / "tests" / "postgres.sh"), "stop", values["KDPIPE_TEST_POSTGRES_DIR"]],
       ROOT)


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    folder = tmp_path_factory.mktemp("server")
    (folder / "auth.ini").write_text(
        f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{folder / 'auth.db'}\n"
        f"admin_username = {ADMIN}\nadmin_password = {PASSWORD}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    port = closed_port()
    env = {**clean_env(), "MLFLOW_AUTH_CONFIG_PATH": str(folder / "auth.ini"),
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "kd-test-secret"}  # for CSRF protection
    process = subprocess.Popen(
        ["mlflow", "server", "--backend-store-uri", postgres, "--app-name", "basic-auth",
         "--artifacts-destination", (folder / "artifacts").as_uri(), "--serve-artifacts",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=folder, env=env, stdout=open(folder / "log", "w"), stderr=subprocess.STDOUT,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_for_server(url, process, log=folder / "log")
    yield url
    stop_server(process)


def client_env(url: str, password: str = PASSWORD) -> dict:
    return {**clean_env(), "MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_USERNAME": ADMIN,
            "MLFLOW_TRACKING_PASSWORD": password}


def server_runs(url: str, experiment: str) -> list:
    """Every run of `experiment` on the server, read as the admin."""
    import mlflow

    mlflow.set_tracking_uri(url)
    os.environ.update(MLFLOW_TRACKING_USERNAME=ADMIN, MLFLOW_TRACKING_PASSWORD=PASSWORD)
    try:
        return mlflow.search_runs(experiment_names=[experiment], output_format="list")
    finally:
        del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
        mlflow.set_tracking_uri(None)


def use_experiment(repo: Path, prefix: str) -> str:
    """Record `repo` into a new experiment: the server's PostgreSQL may outlive one test run."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(params.replace("experiment: knowledge-distillation",
                                                     f"experiment: {name}"))
    return name


@pytest.mark.slow  # ~2.5 min; tests/test_slurm.py runs the pipeline against this server too
def test_the_pipeline_records_into_the_team_server(built, tmp_path, server, postgres):
    import mlflow
    import psycopg
    import torch

    repo = clone(built, tmp_path / "repo")
    name = use_experiment(repo, "team")
    env = client_env(server)
    assert len(ran_stages(sh(["dvc", "repro", "-f"], repo, env))) == 10
    os.environ.update({k: env[k] for k in env if k.startswith("MLFLOW_")})
    try:
        mlflow.set_tracking_uri(server)
        client = mlflow.MlflowClient()
        experiment = client.get_experiment_by_name(name)
        runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
        assert len(runs) == 9 and all(r.info.status == "FINISHED" for r in runs.values())
        kd = client.get_run(runs["kd-42"].info.run_id)
        assert kd.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied by the server
        teacher_model = runs["teacher-42"].outputs.model_outputs[0].model_id
        assert [m.model_id for m in kd.inputs.model_inputs] == [teacher_model]
        best = client.get_model_version_by_alias("kd-student", "best")
        assert best.tags["chosen_by"] == "val_acc"
        model = mlflow.pytorch.load_model("models:/kd-student@best")  # through the server
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    finally:
        for key in list(os.environ):
            if key.startswith("MLFLOW_TRACKING_"):
                del os.environ[key]
        mlflow.set_tracking_uri(None)
    with psycopg.connect(postgres) as db, db.cursor() as cursor:  # it is all in PostgreSQL
        cursor.execute("SELECT count(*) FROM runs r JOIN experiments e "
                       "ON r.experiment_id = e.experiment_id WHERE e.name = %s", (name,))
        assert cursor.fetchone()[0] == 9
        cursor.execute("SELECT count(*) FROM registered_model_aliases WHERE alias = 'best'")
        assert cursor.fetchone()[0] >= 1


def test_a_wrong_password_stops_a_stage_at_once_naming_the_cause(built, tmp_path, server):
    repo = clone(built, tmp_path / "repo")
    done = subprocess.run(["dvc", "repro", "-f", "-s", "train_student@42"], cwd=repo,
                          env=client_env(server, password="wrong"),
                          capture_output=True, text=True, timeout=600)  # minutes: retries
    assert done.returncode != 0
    assert "rejected the credentials (401 Unauthorized): check MLFLOW_TRACKING_USERNAME" in (
        done.stdout + done.stderr)
    assert not (repo / "models" / "student-42.pt").exists()  # nothing trained or written


def test_queued_experiments_write_to_the_server_in_parallel(built, tmp_path, server):
    repo = clone(built, tmp_path / "repo")
    name = use_experiment(repo, "team-queue")
    sh(["git", "commit", "-qam", "record into team-queue"], repo)
    env = client_env(server)
    wanted = {"t1": 1.0, "t4": 4.0}  # two experiments, one worker each
    failed = run_queue(repo, env, wanted, jobs=2)
    if failed:  # DVC's own queue can lose a task of parallel workers (treeverse/dvc#10673)
        failed = run_queue(repo, env, {f"{n}-again": wanted[n] for n in failed}, jobs=1)
    assert not failed
    runs = server_runs(server, name)
    assert all(r.info.status == "FINISHED" for r in runs)
    kd = [float(r.data.params["distill.kd.temperature"]) for r in runs
          if r.info.run_name == "kd-42"]
    assert set(kd) == set(wanted.values())
    assert len([r for r in runs if r.info.run_name == "compare"]) >= 2


def run_queue(repo: Path, env: dict, temperatures: dict, jobs: int) -> list[str]:
    """Queue one experiment per name in `temperatures` (name -> distill.kd.temperature), run the
    queue with `jobs` workers and return the names of those that failed outside their stages (a
    task that failed in a stage fails the test here, with its logs)."""
    for exp, temperature in temperatures.items():
        sh(["dvc", "exp", "run", "--queue", "-n", exp, "-S",
            f"distill.kd.temperature={temperature}"], repo, env)
    sh(["dvc", "queue", "start", "-j", str(jobs)], repo, env)
    deadline = time.monotonic() + 600
    while "Running" in (status := sh(["dvc", "queue", "status"], repo, env)) or \
            "Queued" in status:
        assert time.monotonic() < deadline, status
        time.sleep(2)
    rows = {fields[1]: fields[-1] for fields in map(str.split, status.splitlines()[1:])
            if len(fields) > 2 and fields[1] in temperatures}  # task, name, created, status
    assert set(rows) == set(temperatures), status
    failed = [exp for exp, state in rows.items() if state != "Success"]
    logs = queue_logs(repo, failed, env)
    assert "failed to reproduce" not in logs, status + logs
    print(status + logs)  # pytest shows it if the test fails later
    return failed


def queue_logs(repo: Path, failed: list[str], env: dict) -> str:
    """Each failed task's `dvc queue logs` (its stages' output), then what DVC's queue workers
    printed (a task that fails before a stage runs has only these)."""
    logs = [subprocess.run(["dvc", "queue", "logs", exp], cwd=repo, env=env,
                           capture_output=True, text=True) for exp in failed]
    workers = sorted((repo / ".dvc/tmp/exps/celery").glob("*.out")) if failed else []
    return "".join([f"\n--- {log.args[3]}\n{log.stdout[-4000:]}{log.stderr}" for log in logs] +
                   [f"\n--- {log.name}\n{log.read_text()[-4000:]}" for log in workers])


def released(barrier, env: dict, function, *args):
    """In a process of its own, with a repository root of its own as a cluster job's clone
    (no lock file shared): `function(*args)` as soon as every process is ready."""
    os.environ.update(env, DVC_ROOT=tempfile.mkdtemp())
    import mlflow  # noqa: F401 -- imported first, so that the calls start together

    barrier.wait()
    return function(*args)


def concurrently(env: dict, calls: list) -> list:
    """Each (function, args) of `calls` in a fresh process of its own, all released at once."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, \
            ProcessPoolExecutor(len(calls), mp_context=context) as pool:
        barrier = manager.Barrier(len(calls))
        futures = [pool.submit(released, barrier, env, function, *args)
                   for function, args in calls]
        return [future.result(timeout=300) for future in futures]


def register_as(model: str, *args):
    """register_best_student into the registered model `model` (of the test's own: the
    pipeline's `kd-student@best` stays with the pipeline's data)."""
    from kdpipe.tracking import registry

    registry.REGISTERED_MODEL = model
    return registry.register_best_student(*args)


def test_concurrent_compare_runs_share_the_experiment_and_the_better_model_takes_the_aliases(
        server, monkeypatch):
    """The two steps of `compare` that race, run at the same instant by two processes against
    the server: creating a new experiment, and moving the aliases."""
    import mlflow

    from kdpipe.tracking.registry import data_alias
    from kdpipe.tracking.store import set_experiment
    from tests.test_registry import DATA, trained

    env = {k: v for k, v in client_env(server).items() if k.startswith("MLFLOW_")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    ids = concurrently(env, [(set_experiment, ("compare-race",))] * 2)
    assert ids[0] == ids[1]
    model = f"race-{uuid.uuid4().hex[:8]}"
    mlflow.set_tracking_uri(server)
    try:
        mlflow.set_experiment(experiment_id=ids[0])
        worse, better = trained(60.0, 70.0), trained(61.0, 50.0)
        concurrently(env, [(register_as, (model, "kd", worse, "val_acc")),
                           (register_as, (model, "cosine", better, "val_acc"))])
        for alias in ("best", data_alias(DATA)):
            held = mlflow.MlflowClient().get_model_version_by_alias(model, alias)
            assert held.tags["mlflow_run_id"] == better["mlflow_run_id"]
    finally:
        mlflow.set_tracking_uri(None)
