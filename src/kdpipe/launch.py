"""Run a stage script in a process forked from a warm one (kdpipe.warm).

    PYTHONPATH=src python -m kdpipe.launch stages/train.py student 42

Every stage is a new Python process, and on a 2-core CPU about 5 s of each went into importing
PyTorch, torch._dynamo (which torch.optim imports) and MLflow before any work: most of a quick
run's time, and on a GPU, where a student trains in seconds, most of every stage. The launcher
asks a warm process that has imported them once to fork (milliseconds, copy-on-write) and run
the script there with this process's arguments, working directory, environment, umask and
standard streams (so a terminal stays a terminal), forwards SIGINT/SIGTERM/SIGHUP to it and
exits with its exit code. The first stage starts the warm process and waits for it; it exits
after kdpipe.warm.IDLE_SECONDS without work.

It falls back to running the script in this very process image (`exec`, as plain
`python stages/train.py ...` would) when KDPIPE_WARM=0, off Linux, or when no warm process can
be reached. This module imports only the standard library: it must start in milliseconds.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import site
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Variables that differ between stages (or experiments) but not what the warm process
# imported; every other variable must match, or a warm process of its own is started.
PER_STAGE_PREFIXES = ("DVC_", "MLFLOW_", "KDPIPE_")
PER_STAGE = {"PWD", "OLDPWD", "SHLVL", "_", "PYTHONPATH", "TERM", "COLUMNS", "LINES"}
START_TIMEOUT = 180.0  # seconds to wait for a new warm process to finish importing


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: python -m kdpipe.launch <stage script> [args...]")
    started = time.time()
    if os.environ.get("KDPIPE_WARM", "1") == "0" or sys.platform != "linux":
        run_cold(argv)
    try:
        conn = connect_or_start(socket_path())
    except (OSError, TimeoutError) as err:
        print(f"kdpipe: no warm process ({err}); running the stage cold", file=sys.stderr)
        run_cold(argv)
    sys.exit(run_warm(conn, argv, started))


def run_cold(argv: list[str]) -> None:
    os.execv(sys.executable, [sys.executable, *argv])


WARM_SERVER = Path(__file__).with_name("warm.py")


def socket_path() -> Path:
    """One warm process per interpreter, installed packages, environment and version of the
    launcher's own code."""
    env = {k: v for k, v in os.environ.items()
           if k not in PER_STAGE and not k.startswith(PER_STAGE_PREFIXES)}
    installed = [os.stat(p).st_mtime_ns for p in site.getsitepackages() if os.path.isdir(p)]
    code = [hashlib.sha256(f.read_bytes()).hexdigest() for f in (Path(__file__), WARM_SERVER)]
    key = json.dumps([sys.executable, sys.version, installed, code, sorted(env.items())])
    folder = Path(tempfile.gettempdir()) / f"kdpipe-warm-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.sock"


def connect(path: Path) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError:
        conn.close()
        raise
    return conn


def connect_or_start(path: Path) -> socket.socket:
    try:
        return connect(path)
    except OSError:
        pass
    # Run as a script with no PYTHONPATH: the warm process imports no project code, so it never
    # holds a stale copy of a workspace's src/ (each stage imports its own).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with open(path.with_suffix(".log"), "ab") as log:
        server = subprocess.Popen([sys.executable, str(WARM_SERVER), str(path)], cwd="/",
                                  env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                  start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            return connect(path)
        except OSError:
            if server.poll() not in (None, 0):
                log = path.with_suffix(".log")
                raise OSError(f"it exited with {server.returncode}; see {log}") from None
            time.sleep(0.05)
    raise TimeoutError(f"not ready after {START_TIMEOUT:.0f} s")


def send(conn: socket.socket, request: dict) -> None:
    """Length-prefixed JSON, with this process's stdin, stdout and stderr attached."""
    body = json.dumps(request).encode()
    socket.send_fds(conn, [struct.pack("!I", len(body))], [0, 1, 2])
    conn.sendall(body)


def run_warm(conn: socket.socket, argv: list[str], started: float) -> int:
    umask = os.umask(0)
    os.umask(umask)
    send(conn, {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "umask": umask,
                "started": started})
    replies = conn.makefile("r")
    child = int(replies.readline() or 0)
    if not child:
        print("kdpipe: the warm process could not start the stage", file=sys.stderr)
        return 1
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: os.kill(child, signum))
    status = replies.readline().split()
    if status[:1] != ["exit"]:
        print(f"kdpipe: stage process {child} ended without an exit status (killed?)",
              file=sys.stderr)
        return 1
    return int(status[1])


if __name__ == "__main__":
    main(sys.argv[1:])
