"""MLflow: one store at the repository root, one run per stage execution.

The store is `MLFLOW_TRACKING_URI` if set, else `sqlite:///<root>/mlflow.db` with artifacts in
`<root>/mlartifacts`. `root` is DVC_ROOT (set by DVC for every stage, and pointing at the main
repository even inside `dvc exp run --queue` temp workspaces), else the folder holding
dvc.yaml. Never the current directory: queued experiments run in temp dirs that are deleted.
"""
from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from kdpipe.core.errors import TrackingError


def repo_root() -> Path:
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path.cwd().resolve()
    return next((p for p in (here, *here.parents) if (p / "dvc.yaml").exists()), here)


def tracking_uri() -> str:
    # timeout: parallel stages (`dvc queue start -j N`) wait for SQLite's write lock instead of
    # failing with "database is locked" after pysqlite's default 5 s.
    default = f"sqlite:///{repo_root() / 'mlflow.db'}?timeout=60"
    return os.environ.get("MLFLOW_TRACKING_URI") or default


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise, across processes, the first use of a SQLite store: processes creating or
    migrating its tables at once fail. The lock file sits beside the database, so processes
    sharing the store share it. Other stores (a tracking server) need no lock here."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    folder = Path(uri.removeprefix("sqlite:///").split("?")[0]).parent
    with open(folder / "mlflow.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def probe(uri: str, timeout: float = 3.0) -> None:
    """Fail within seconds, before any work, if an HTTP tracking server is unreachable or
    refuses this client's credentials: MLflow's own client would retry for minutes, after the
    compute is spent."""
    if not uri.startswith(("http://", "https://")):
        return
    base = uri.rstrip("/")
    try:
        urllib.request.urlopen(base + "/health", timeout=timeout).close()
    except (urllib.error.URLError, OSError) as err:
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({getattr(err, 'reason', err)}). "
            "Start it (`mlflow server --host 127.0.0.1 --port 5000 ...`), fix "
            "MLFLOW_TRACKING_URI, or unset it to use the local sqlite store.") from None
    request = urllib.request.Request(
        base + "/api/2.0/mlflow/experiments/search", method="POST", headers=auth_headers(),
        data=json.dumps({"max_results": 1}).encode())
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
    except urllib.error.HTTPError as err:
        if err.code == 401:
            raise TrackingError(
                f"MLflow tracking server {uri} rejected the credentials (401 Unauthorized): "
                "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD") from None
        if err.code == 403:
            raise TrackingError(
                f"MLflow tracking server {uri}: user {os.environ.get(USER_VAR, '?')!r} lacks "
                "permission (403 Forbidden); ask its admin for EDIT on the experiment") from None
    except (urllib.error.URLError, OSError):
        pass  # reachable a moment ago; MLflow's own client reports anything else


USER_VAR, PASSWORD_VAR = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"


def auth_headers() -> dict:
    """HTTP basic auth from MLflow's own variables, as its client sends it."""
    headers = {"Content-Type": "application/json"}
    if os.environ.get(USER_VAR):
        token = f"{os.environ[USER_VAR]}:{os.environ.get(PASSWORD_VAR, '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
    return headers


def set_experiment(name: str) -> str:
    """Point MLflow at the store and return the experiment's id, creating it (with artifacts
    under the repo root, not under whatever folder ran first) if needed. Processes creating it
    at once, on any machines, all get the one the store kept (the store refuses a second)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    try:
        with store_lock(uri):
            experiment = client.get_experiment_by_name(name)
            if experiment is not None:
                return experiment.experiment_id
            try:
                return client.create_experiment(name, artifact_location=artifact_location(uri))
            except MlflowException as err:
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                return client.get_experiment_by_name(name).experiment_id
    except MlflowException as err:
        raise TrackingError(f"MLflow tracking URI {uri!r} is not usable "
                            f"({str(err).splitlines()[0]}); fix or unset "
                            "MLFLOW_TRACKING_URI") from None


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a SQLite store (the repository root
    for the default one; a shared folder for a store there, so that runs from temporary clones,
    `dvc exp --queue` or cluster jobs, outlive them); a server's own choice otherwise."""
    if uri.startswith(("http://", "https://")):
        return None
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///").split("?")[0]).parent / "mlartifacts").as_uri()
    return (repo_root() / "mlartifacts").as_uri()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


RECORD_ENV_VARS_VAR = "MLFLOW_RECORD_ENV_VARS_IN_MODEL_LOGGING"
DVC_TAGS = {"dvc.exp_name": "DVC_EXP_NAME", "dvc.baseline_rev": "DVC_EXP_BASELINE_REV"}


def run_tags(stage: str) -> dict:
    env = os.environ
    tags = {"dvc.stage": env.get("DVC_STAGE", stage), "git.commit": git_commit()}
    for tag, var in DVC_TAGS.items():
        if env.get(var):
            tags[tag] = env[var]
    return tags


@contextlib.contextmanager
def stage_run(experiment: str, name: str, params: dict, run_id: str | None = None,
              tags: dict | None = None) -> Iterator:
    """One MLflow run, named `name` (e.g. kd-43), for one stage execution (or the continuation
    of `run_id` after a resume), with `tags` beside the standard ones. A run stopped by Ctrl-C
    or SIGTERM is marked KILLED, a crash FAILED."""
    import mlflow

    experiment_id = set_experiment(experiment)
    # MLflow refuses to continue a run of another experiment than the process's active one
    # (which code run earlier in the process may have set): this run's is made the active one.
    mlflow.set_experiment(experiment_id=experiment_id)
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    if SAMPLING_INTERVAL_VAR not in os.environ:
        mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_SECONDS)
    # MLflow's log_model records which environment variables were read while it ran in a set
    # that it then iterates unguarded: the system-metrics thread reading a new one meanwhile
    # fails the stage ("Set changed size during iteration"). The record only serves
    # Databricks' serving tips, so it is off unless the user turns it on.
    os.environ.setdefault(RECORD_ENV_VARS_VAR, "false")
    run = mlflow.start_run(run_id=run_id, experiment_id=experiment_id,
                           run_name=None if run_id else name,
                           tags={**run_tags(name), **(tags or {})},
                           log_system_metrics=system_metrics_enabled())
    try:
        if run_id is None:
            mlflow.log_params(params)
        yield run
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")
    finally:
        signal.signal(signal.SIGTERM, previous)


# System metrics (CPU, memory, disk, network; GPU utilisation and memory with the `gpu` extra's
# nvidia-ml-py), as MLflow's run page shows them under "System metrics". MLflow's own variables
# control them: MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false turns them off (on by default here),
# MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL sets the seconds between samples. The default, 2 s,
# gives even a short student stage a few points for ~5 ms of work each.
ENABLE_VAR = "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"
SAMPLING_INTERVAL_VAR = "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"
SYSTEM_METRICS_SECONDS = 2.0


def system_metrics_enabled() -> bool:
    # Its start and stop messages would fill every stage's output; warnings still show.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    return os.environ.get(ENABLE_VAR, "true").strip().lower() not in ("false", "0", "no")


def runs_page(experiment_id: str) -> str:
    """The experiment's training runs in the MLflow UI. `workflowType=machine_learning` opens
    the runs table; without it MLflow 3.17 opens its GenAI overview. The address is the
    tracking server's, or `mlflow ui`'s default for a local store."""
    uri = tracking_uri()
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}?workflowType=machine_learning"


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
