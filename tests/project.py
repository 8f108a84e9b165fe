"""A copy of the project to run DVC in: made from the files git would commit, run with this
interpreter's tools and no outside MLflow or DVC settings."""
from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from tests.conftest import ROOT

# The quick pipeline the integration tests run: tiny synthetic data, one epoch, one seed.
QUICK = {"data": {"source": "synthetic", "limit_train": 300, "limit_test": 200},
         "teacher": {"epochs": 1}, "student": {"epochs": 1}, "seeds": [42]}


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


# The warm stage launchers this test run starts live here, apart from a user's own: the session
# ends every process serving from it (tests/conftest.py), and they go idle after WARM_IDLE s.
WARM_DIR = Path(tempfile.mkdtemp(prefix="kdpipe-test-warm-"))
WARM_IDLE = "20"  # bridges the gaps between one repro's stages; not the 300 s of a user's


def clean_env() -> dict:
    """This interpreter's tools, no outside MLflow or DVC settings, and no variable that differs
    per test (PYTEST_CURRENT_TEST would key a warm process to each test)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "DVC_")) and k != "PYTEST_CURRENT_TEST"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env |= {"XDG_RUNTIME_DIR": str(WARM_DIR), "KDPIPE_WARM_IDLE": WARM_IDLE}
    return env


def sh(cmd: list[str], cwd: Path, env: dict | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env or clean_env(), capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def copy_project(repo: Path) -> Path:
    """Copy the project's files into a new git repo at `repo`."""
    for rel in tracked_files():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, repo / rel)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        sh(cmd, repo)
    return repo


def clone(built: Path, dest: Path) -> Path:
    """A private copy of a built project (git, DVC cache, outputs, MLflow store) to change. The
    store names its artifact folders by absolute path: they are moved to the copy's, so that
    the copy's runs write there, never into `built`."""
    shutil.copytree(built, dest, symlinks=True)
    with sqlite3.connect(dest / "mlflow.db") as db:
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                              ("logged_models", "artifact_location"),
                              ("model_versions", "storage_location")):
            db.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)",
                       (built.resolve().as_uri(), dest.resolve().as_uri()))
    return dest


def exports(script_output: str) -> dict[str, str]:
    """The `export NAME=value` lines a start script (tests/postgres.sh, tests/slurm.sh) prints."""
    return dict(line.removeprefix("export ").split("=", 1) for line in script_output.splitlines())


def stop_server(process: subprocess.Popen) -> None:
    """Stops a server started with start_new_session=True and its workers: SIGTERM to its
    process group, SIGKILL if it has not exited 30 s later (a busy host slows a clean exit)."""
    import signal

    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def wait_for_server(url: str, process: subprocess.Popen, seconds: float = 120,
                    log: Path | None = None) -> None:
    """Until `url`/health answers; fails if the server process exits or time runs out."""
    import time
    import urllib.request

    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).close()
            return
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, \
                log.read_text()[-2000:] if log else "no server"
            time.sleep(0.5)


def edit_params(repo: Path, changes: dict) -> None:
    """Merge `changes` (nested like params.yaml) into the repo's params.yaml."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())

    def merge(node: dict, update: dict) -> None:
        for key, value in update.items():
            if isinstance(value, dict) and isinstance(node.get(key), dict):
                merge(node[key], value)
            else:
                node[key] = value

    merge(params, changes)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def stale_stages(repo: Path) -> list[str]:
    """What `dvc status` says would rerun."""
    return sorted(json.loads(sh(["dvc", "status", "--json"], repo)))


def read_json(path: Path):
    return json.loads(path.read_text())


MODELS_PER_SEED = ["student-42", "kd-42", "cosine-42", "hint-42"]  # run names, QUICK's seed


def chosen_student(repo: Path) -> dict:
    """What compare chose (models/chosen.json): the model stage export ships."""
    return read_json(repo / "models" / "chosen.json")


def and_export(before: dict, repo: Path) -> list[str]:
    """["export"] if the last repro changed the chosen student (`before`: chosen_student
    then), else []: export reruns exactly when the model it ships changes."""
    return ["export"] if chosen_student(repo) != before else []
