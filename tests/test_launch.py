"""The warm launcher (kdpipe.ops.launch, kdpipe.ops.warm) with tiny stage scripts and warm
processes that import nothing (KDPIPE_WARM_PRELOAD=0), in a folder of their own: stages run warm
or cold as they should, with their caller's process state, and end as a plain process would."""
import fcntl
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

OPS = ROOT / "src" / "kdpipe" / "ops"  # warm.py imports by plain name from its own folder

STAGE = Path(__file__).with_name("launched_stage.py")


@pytest.fixture
def root():
    """A short folder (socket paths must fit in 108 bytes), whose warm processes are killed."""
    folder = Path(tempfile.mkdtemp(prefix="kdw-"))
    (folder / "run").mkdir(mode=0o700)
    shutil.copy(STAGE, folder / "stage.py")
    yield folder
    for pid in warm_processes(folder):
        os.killpg(pid, signal.SIGKILL)  # the warm process and the stages it forked
    shutil.rmtree(folder, ignore_errors=True)


def warm_processes(folder: Path) -> list[int]:
    """The session leaders (warm processes) whose command line names `folder`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if (entry.name.isdigit() and str(folder) in (entry / "cmdline").read_text()
                    and os.getsid(int(entry.name)) == int(entry.name)):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile
            pass
    return found


@pytest.fixture
def env(root) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KDPIPE_", "MLFLOW_")) and k != "PYTEST_CURRENT_TEST"}
    env.update(PYTHONPATH=str(ROOT / "src"), XDG_RUNTIME_DIR=str(root / "run"), TMPDIR=str(root),
               KDPIPE_WARM_PRELOAD="0", KDPIPE_WARM_IDLE="1")
    return env


def start(root: Path, env: dict, *args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kdpipe.ops.launch", str(root / "stage.py"),
                             *args],
                            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


def report(proc: subprocess.Popen) -> dict:
    """What the stage printed first about itself; `cold` when it ran in the launcher's process."""
    seen = json.loads(proc.stdout.readline())
    return {**seen, "cold": seen["pid"] == proc.pid}


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    """The exit code and stderr; the bound only stops a hang (the old launcher waited 180 s)."""
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return proc.returncode, err


def launch(root: Path, env: dict, *args: str, **popen) -> tuple[dict, int, str]:
    proc = start(root, env, *args, **popen)
    seen = report(proc)
    return (seen, *finish(proc))


def socket_for(env: dict, monkeypatch) -> Path:
    """The socket a launcher run with `env` (from this test's process) connects to."""
    from kdpipe.ops import launch

    for name in set(os.environ) - set(env):
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return launch.socket_path()


def wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler for `sig` (the launcher, once it forwards)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(status.split("SigCgt:")[1].split()[0], 16)
    return bool(caught >> (sig - 1) & 1)


def test_the_warm_process_stays_while_a_stage_runs_past_its_idle_time(root, env):
    first = start(root, env, "wait", str(root / "done"))
    try:
        seen = report(first)
        time.sleep(2)  # twice KDPIPE_WARM_IDLE
        again, code, _ = launch(root, env, "report")
        assert code == 0 and not again["cold"] and again["ppid"] == seen["ppid"]
        assert not seen["cold"] and not any(t.endswith(".lock") for t in seen["fds"])
    finally:
        (root / "done").touch()
        assert finish(first)[0] == 0


def test_a_stage_outliving_its_warm_process_does_not_keep_a_new_one_out(root, env):
    first = start(root, env, "wait", str(root / "done"))
    try:
        old = report(first)["ppid"]
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{old}").exists()
                 or Path(f"/proc/{old}/stat").read_text().split()[2] == "Z")
        seen, code, err = launch(root, env, "report")  # before: 180 s, then cold
        assert code == 0 and not seen["cold"] and seen["ppid"] != old, err
    finally:
        (root / "done").touch()
        code, err = finish(first)
    # Only the warm process learns a stage's exit status: with it gone, the launcher says so
    # and fails rather than report a success it cannot know.
    assert code == 1
    assert "kdpipe: the warm process went away; the exit status of stage process" in err


def test_a_launcher_finding_the_lock_of_an_exiting_warm_process_starts_another(
        root, env, monkeypatch):
    """An idle warm process removes its socket, then exits holding its lock (held here): a
    launcher starting meanwhile must start another once the lock is free."""
    path = socket_for(env, monkeypatch)
    log = path.with_suffix(".log")
    lock = os.open(f"{path}.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        proc = start(root, env, "report")
        wait_for(lambda: log.exists() and "holds the lock" in log.read_text())
    finally:
        os.close(lock)
    seen, (code, err) = report(proc), finish(proc)  # before: 180 s, then cold
    assert code == 0 and not seen["cold"], err


def test_a_stage_whose_launcher_is_killed_is_interrupted(root, env):
    """DVC or the user killing the launcher (SIGKILL: it forwards nothing) must not leave the
    stage running in the warm process: it is interrupted as SIGTERM would (MLflow run KILLED,
    checkpoint kept)."""
    proc = start(root, env, "wait", str(root / "never"))
    stage = report(proc)["pid"]
    proc.kill()
    proc.wait()
    wait_for(lambda: not Path(f"/proc/{stage}").exists()
             or Path(f"/proc/{stage}/stat").read_text().split()[2] == "Z")


def test_a_folder_others_may_use_is_not_trusted(root, env):
    shared = root / f"kdpipe-warm-{os.getuid()}"
    shared.mkdir()
    shared.chmod(0o777)
    seen, code, err = launch(root, {k: v for k, v in env.items() if k != "XDG_RUNTIME_DIR"},
                             "report")
    assert code == 0 and seen["cold"]
    assert f"{shared} is not a private folder" in err and "running the stage cold" in err
    assert list(shared.iterdir()) == []
    seen, code, _ = launch(root, env, "report")  # $XDG_RUNTIME_DIR, where set, instead
    assert code == 0 and not seen["cold"]
    assert list((root / "run" / "kdpipe-warm").glob("*.sock"))


def test_a_stage_ignores_the_signals_its_caller_ignores(root, env):
    # SIGHUP at its default for this caller, even where pytest itself runs under nohup
    seen, code, _ = launch(root, env, "report",
                           preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    assert code == 0 and not seen["cold"] and not seen["hup_ignored"]
    nohup = start(root, env, "wait", str(root / "done"),
                  preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    try:
        seen = report(nohup)
        assert not seen["cold"] and seen["hup_ignored"]
        nohup.send_signal(signal.SIGHUP)  # as at logout: not passed on
    finally:
        (root / "done").touch()
    assert finish(nohup)[0] == 0


def test_a_stage_killed_by_a_signal_exits_as_a_shell_reports_it(root, env):
    proc = start(root, env, "wait", str(root / "never"))
    assert not report(proc)["cold"]
    wait_for(lambda: catches(proc.pid, signal.SIGTERM))
    proc.terminate()  # forwarded to the stage, which Python's default SIGTERM ends
    assert finish(proc)[0] == 128 + signal.SIGTERM


def test_a_stage_leaving_an_idle_executor_ends(root, env):
    seen, code, _ = launch(root, env, "executor")
    assert code == 0 and not seen["cold"]


def test_a_stage_leaving_a_stuck_thread_ends_after_the_wait_saying_so(root, env):
    seen, code, err = launch(root, {**env, "KDPIPE_THREAD_WAIT": "0.5"}, "stuck")
    assert code == 0 and not seen["cold"]
    assert "threads still running 0.5 s after the stage ended (stuck)" in err


def test_a_warm_process_running_a_thread_has_the_stage_run_cold(root, env, monkeypatch):
    path = socket_for(env, monkeypatch)
    server = ("import sys, threading; sys.path.insert(0, sys.argv[1]); import warm; "
              "threading.Thread(target=threading.Event().wait, daemon=True).start(); "
              "warm.serve(sys.argv[2])")
    subprocess.Popen([sys.executable, "-c", server, str(OPS), str(path)],
                     env=env, start_new_session=True)
    wait_for(path.exists)
    seen, code, err = launch(root, env, "report")
    assert code == 0 and seen["cold"]
    assert err.splitlines() == ["kdpipe: the warm process runs 2 threads (MainThread, Thread-1 "
                                "(wait)); running the stage cold"]


def test_a_launcher_losing_its_warm_process_before_the_stage_starts_runs_it_cold(
        root, env, monkeypatch):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_for(env, monkeypatch)))
    listener.listen()
    threading.Thread(target=lambda: listener.accept()[0].close(), daemon=True).start()
    try:
        seen, code, err = launch(root, env, "report")
    finally:
        listener.close()
    assert code == 0 and seen["cold"]
    assert err.strip() == "kdpipe: the warm process went away; running the stage cold"


def test_a_stage_runs_with_its_callers_affinity_nice_and_limits(root, env):
    seen, code, _ = launch(root, env, "report")
    assert code == 0 and not seen["cold"]
    cpus = sorted(os.sched_getaffinity(0))[:1]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = min(soft, 200)

    def restrict():
        os.sched_setaffinity(0, cpus)
        os.nice(3)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))

    seen, code, _ = launch(root, env, "report", preexec_fn=restrict)
    assert code == 0 and not seen["cold"]
    assert (seen["affinity"], seen["nice"], seen["nofile"]) == (cpus, os.nice(0) + 3,
                                                                [limit, hard])


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="no autogroups")
def test_a_stage_keeps_its_callers_autogroup_nice(root, env):
    """A job lowered with `echo 19 > /proc/<pid>/autogroup` on a shared host: its stages run in
    the warm process's session, which must not take the CPU share back at nice 0."""
    def lowered():  # runs after start_new_session's setsid: this session's own autogroup
        Path("/proc/self/autogroup").write_text("7")

    seen, code, _ = launch(root, env, "report", start_new_session=True, preexec_fn=lowered)
    assert code == 0 and not seen["cold"]
    assert seen["autogroup"] == 7
    seen, code, _ = launch(root, env, "report", start_new_session=True)
    assert code == 0 and not seen["cold"] and seen["autogroup"] == 0  # a warm process of its own


def test_the_user_site_folder_is_part_of_the_key(tmp_path, monkeypatch):
    import site

    from kdpipe.ops import launch

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setattr(site, "USER_SITE", str(tmp_path / "user-site"))
    before = launch.socket_path()
    (tmp_path / "user-site").mkdir()
    created = launch.socket_path()
    (tmp_path / "user-site" / "new_package").mkdir()
    assert len({before, created, launch.socket_path()}) == 3
