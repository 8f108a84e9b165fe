"""Stages run as DVC runs them (through the launcher, in a workspace): bad params, bad data and an
unreachable tracking server end in one clear line within seconds, writing nothing; a stage
killed mid-training resumes and ends with the same weights as an uninterrupted run."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdpipe.learn.checkpoint import safe_load
from tests.conftest import ROOT
from tests.project import clean_env, edit_params
from tests.test_data import image_folder, make_archive
from tests.test_safety import closed_port

QUICK = {"data": {"source": "synthetic", "limit_train": 0, "limit_test": 200},
         "student": {"epochs": 4, "batch_size": 8}}


def workspace(path: Path, changes: dict) -> Path:
    """A folder holding only the project's params.yaml with `changes` applied."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "params.yaml", path / "params.yaml")
    edit_params(path, changes)
    return path


# How long a stage of these tiny runs may take before the test gives up on it: generous, so a
# loaded machine never hits it (these stages take seconds). Failing fast is shown by what a
# failed stage leaves (nothing), not by a clock.
DEADLINE = 300


def stage_env(ws: Path, env_extra: dict | None = None) -> dict:
    return {**clean_env(), "PYTHONPATH": str(ROOT / "src"), "DVC_ROOT": str(ws),
            **(env_extra or {})}


def stage(ws: Path, *args: str, env_extra: dict | None = None, wait: bool = True):
    env = stage_env(ws, env_extra)
    cmd = [sys.executable, "-m", "kdpipe.ops.launch", str(ROOT / "stages" / args[0]), *args[1:]]
    if not wait:
        return subprocess.Popen(cmd, cwd=ws, env=env, stdout=subprocess.PIPE, text=True)
    try:
        return subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True,
                              timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        pytest.fail(f"stage {' '.join(args)} did not end within {DEADLINE} s")


def upstream(ws: Path) -> None:
    """What `dvc repro` runs before a training stage: the params check, the data."""
    for script in ("check_params.py", "prepare.py"):
        done = stage(ws, script)
        assert done.returncode == 0, done.stderr


def created(ws: Path) -> list[str]:
    return sorted(p.name for p in ws.iterdir() if p.name != "params.yaml")


def test_a_typo_in_params_fails_fast_with_one_line_and_writes_nothing(tmp_path):
    ws = workspace(tmp_path, {})
    params = (ws / "params.yaml").read_text().replace("  schedule: constant", "  schedle: constant")
    (ws / "params.yaml").write_text(params)
    done = stage(ws, "train.py", "teacher")
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: teacher.schedle: unknown key (did you mean 'schedule'?); "
                           "allowed keys: epochs, lr, batch_size, schedule, ")
    assert created(ws) == []


def test_cuda_requested_without_cuda_is_refused(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    ws = workspace(tmp_path, {})
    (ws / "params.yaml").write_text((ws / "params.yaml").read_text().replace(
        "device: auto", "device: cuda"))
    done = stage(ws, "train.py", "student")
    assert done.returncode == 2 and "device='cuda': CUDA is not available" in done.stderr
    assert created(ws) == []


def test_a_truncated_archive_fails_prepare_cleanly(tmp_path):
    good = make_archive(tmp_path / "good.tar.gz", image_folder(per_class=20))
    (tmp_path / "cut.tar.gz").write_bytes(good.read_bytes()[:good.stat().st_size // 2])
    ws = workspace(tmp_path / "ws", {"data": {"source": "../cut.tar.gz"}})
    done = stage(ws, "prepare.py")
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"error: {tmp_path}/cut.tar.gz: ") and "truncated/corrupt" in line
    assert created(ws) == []


def test_an_unreachable_tracking_server_stops_the_stage_before_any_work(tmp_path):
    ws = workspace(tmp_path, QUICK)
    done = stage(ws, "prepare.py",
                 env_extra={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{closed_port()}"})
    assert done.returncode == 2 and "is unreachable" in done.stderr
    assert created(ws) == []  # it stopped before reading any data


def test_a_killed_stage_resumes_to_the_same_weights(tmp_path):
    import mlflow

    straight = workspace(tmp_path / "straight", QUICK)
    killed = workspace(tmp_path / "killed", QUICK)
    for ws in (straight, killed):
        upstream(ws)
    assert stage(straight, "train.py", "student", "42").returncode == 0

    proc = stage(killed, "train.py", "student", "42", wait=False)
    checkpoint = killed / ".checkpoints" / "student-42.pt"
    deadline = time.monotonic() + DEADLINE
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the stage finished before it could be killed"
    if not checkpoint.exists():
        proc.kill()
        pytest.fail(f"no checkpoint written within {DEADLINE} s")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=DEADLINE) == 130
    assert not (killed / "models" / "student-42.pt").exists()
    mlflow.set_tracking_uri(f"sqlite:///{killed / 'mlflow.db'}")
    [run] = mlflow.search_runs(experiment_names=["knowledge-distillation"],
                               filter_string="attributes.run_name = 'student-42'",
                               output_format="list")
    assert run.info.status == "KILLED"

    resumed = stage(killed, "train.py", "student", "42")
    assert resumed.returncode == 0 and "resuming after epoch" in resumed.stdout
    final = [safe_load(ws / "models" / "student-42.pt") for ws in (straight, killed)]
    assert all(torch.equal(final[0]["state_dict"][k], final[1]["state_dict"][k])
               for k in final[0]["state_dict"])
    assert final[1]["mlflow_run_id"] == run.info.run_id
    client = mlflow.MlflowClient()
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch/val_acc")]
    assert sorted(set(steps)) == [1, 2, 3, 4]
    assert not checkpoint.exists()


PROGRESS_LINE = (r"^student-42  epoch (\d)/3  loss \d+\.\d{3}  val_acc \d+\.\d%  [\d,]+ img/s  "
                 r"\d+:\d\d elapsed  \d+:\d\d left$")


def test_a_stage_in_a_log_prints_one_progress_line_per_epoch_and_no_bar(tmp_path):
    ws = workspace(tmp_path, {**QUICK, "student": {"epochs": 3, "batch_size": 64}})
    assert stage(ws, "prepare.py").returncode == 0
    done = stage(ws, "train.py", "student", "42")  # without check_params, as if run by hand
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: data/mixing.json is missing: stage check_params "
                                   "writes it; run `dvc repro check_params`")
    upstream(ws)
    done = stage(ws, "train.py", "student", "42")
    assert done.returncode == 0
    epochs = [re.match(PROGRESS_LINE, line) for line in done.stdout.splitlines()]
    assert [m.group(1) for m in epochs if m] == ["1", "2", "3"], done.stdout
    assert "\r" not in done.stdout + done.stderr and "it/s" not in done.stderr


def test_a_stage_on_a_terminal_also_shows_a_bar(tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    ws = workspace(tmp_path, {**QUICK, "student": {"epochs": 2, "batch_size": 8}})
    upstream(ws)
    main, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 120 columns
    proc = subprocess.Popen([sys.executable, "-m", "kdpipe.ops.launch",
                             str(ROOT / "stages" / "train.py"), "student", "42"],
                            cwd=ws, env=stage_env(ws), stdout=terminal, stderr=terminal)
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the terminal closed: the stage is done
            break
        if not chunk:
            break
        shown += chunk
    assert proc.wait(timeout=DEADLINE) == 0
    text = shown.decode(errors="replace")
    assert "student-42 epoch 1/2" in text and "\r" in text  # tqdm's bar, redrawn in place
    assert re.search(r"student-42  epoch 2/2  loss", text)
