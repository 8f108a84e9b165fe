"""Run a stage script in a process forked from a warm one (kdpipe.ops.warm).

    PYTHONPATH=src python -m kdpipe.ops.launch stages/train.py student 42

Every stage is a new Python process, and on a 2-core CPU about 5 s of each went into importing
PyTorch, torch._dynamo (which torch.optim imports) and MLflow before any work: most of a quick
run's time, and on a GPU, where a student trains in seconds, most of every stage. The launcher
asks a warm process that has imported them once to fork (milliseconds, copy-on-write) and run
the script there with this process's arguments, working directory, environment, umask and
standard streams (so a terminal stays a terminal), forwards SIGINT/SIGTERM/SIGHUP to it (those
this process does not ignore) and exits with its exit code, 128+N if signal N killed it (as a
shell reports it).

A warm process serves only launchers that would have started the same process: same
interpreter, installed packages (the user's site-packages too), environment, launcher code, and
the state a process inherits from the one that starts it: ignored signals, CPU affinity, nice,
the session's autogroup nice, resource limits and cgroup (taskset, nohup, ulimit, Slurm). The
first stage of a kind starts its warm process and waits for it; it exits after
kdpipe.ops.warm.IDLE_SECONDS without a stage.

Sockets and logs lie in a folder only this user may use, as every stage's environment and
streams pass through it: $XDG_RUNTIME_DIR/kdpipe-warm, else kdpipe-warm-<uid> in the temp folder,
which must be this user's with mode 0700.

It falls back to running the script in this very process image (`exec`, as plain
`python stages/train.py ...` would) when KDPIPE_WARM=0 or off Linux, and with one line on
stderr saying why when no warm process can be reached or its folder is not private, when the
warm process finds forking unsafe, or when it goes away before starting the stage. This module
imports only the standard library: it must start in milliseconds.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import resource
import signal
import site
import socket
import stat
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
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


USAGE = "usage: python -m kdpipe.ops.launch <stage script> [args...]"


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit(USAGE)
    if argv[0] in ("-h", "--help"):
        print(f"{USAGE}\n\n{__doc__.split(chr(10) + chr(10), 1)[0]}")
        return
    started = time.time()
    if os.environ.get("KDPIPE_WARM", "1") == "0" or sys.platform != "linux":
        run_cold(argv)
    try:
        conn = connect_or_start(socket_path())
    except OSError as err:
        run_cold(argv, f"no warm process ({err})")
    sys.exit(run_warm(conn, argv, started))


def run_cold(argv: list[str], why: str = "") -> None:
    if why:
        print(f"kdpipe: {why}; running the stage cold", file=sys.stderr)
    os.execv(sys.executable, [sys.executable, *argv])


WARM_SERVER = Path(__file__).with_name("warm.py")


def socket_path() -> Path:
    """One warm process per interpreter, installed packages, environment, version of the
    launcher's own code and inherited process state: its stages inherit that state from it."""
    env = {k: v for k, v in os.environ.items()
           if k not in PER_STAGE and not k.startswith(PER_STAGE_PREFIXES)}
    installed = [(p, os.stat(p).st_mtime_ns if os.path.isdir(p) else None)
                 for p in (*site.getsitepackages(), site.getusersitepackages())]
    code = [hashlib.sha256(f.read_bytes()).hexdigest() for f in (Path(__file__), WARM_SERVER)]
    key = json.dumps([sys.executable, sys.version, installed, code, sorted(env.items()),
                      inherited_state()])
    return private_folder() / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.sock"


def inherited_state() -> list:
    """What a forked stage inherits from the warm process rather than from this one."""
    ignored = [int(s) for s in sorted(signal.valid_signals())
               if signal.getsignal(s) == signal.SIG_IGN]
    limits = [resource.getrlimit(getattr(resource, name))
              for name in sorted(dir(resource)) if name.startswith("RLIMIT_")]
    return [ignored, sorted(os.sched_getaffinity(0)), os.getpriority(os.PRIO_PROCESS, 0), limits,
            Path("/proc/self/cgroup").read_text(), autogroup_nice()]


def autogroup_nice() -> int | None:
    """The nice value of this process's autogroup; None where the kernel has none, or in the
    default one (a session descended from init without setsid: its file reads empty). Linux
    shares the CPU fairly between sessions (autogroups) before it looks at a process's own nice,
    so a shared host's user lowers a whole job's share with `echo 19 > /proc/<pid>/autogroup`."""
    try:
        return int(Path("/proc/self/autogroup").read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def share_autogroup_nice(pid: int) -> None:
    """Give the warm process, which leads a new session and so a new autogroup at nice 0, this
    process's autogroup nice: else its stages would take back the CPU share the caller gave up.
    Best effort: a kernel without autogroups, or a nice below 0 without the privilege, keeps 0."""
    nice = autogroup_nice()
    if nice:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/autogroup").write_text(str(nice))


def private_folder() -> Path:
    """The folder for sockets and logs; PermissionError if another user could use it."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    folder = (Path(runtime, "kdpipe-warm") if runtime
              else Path(tempfile.gettempdir(), f"kdpipe-warm-{os.getuid()}"))
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    info = os.lstat(folder)  # not following a link, which anyone could have planted
    if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid()
            or stat.S_IMODE(info.st_mode) != 0o700):
        raise PermissionError(f"{folder} is not a private folder (owner uid {info.st_uid}, "
                              f"{stat.filemode(info.st_mode)}; wanted uid {os.getuid()}, "
                              "drwx------)")
    return folder


def connect(path: Path) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError:
        conn.close()
        raise
    return conn


def connect_or_start(path: Path) -> socket.socket:
    deadline = time.monotonic() + START_TIMEOUT
    server = None
    while time.monotonic() < deadline:
        try:
            return connect(path)
        except OSError:
            pass
        # Exit status 0: it found another warm process holding the lock, which is about to
        # listen, or idled out and is still exiting: then, once the lock is free, start another.
        if server is None or (server.poll() == 0 and lock_is_free(path)):
            server = start_server(path)
        elif server.returncode not in (None, 0):
            raise OSError(f"it exited with {server.returncode}; see {path.with_suffix('.log')}")
        time.sleep(0.05)
    raise TimeoutError(f"not ready after {START_TIMEOUT:.0f} s")


def start_server(path: Path) -> subprocess.Popen:
    # Run as a script with no PYTHONPATH: the warm process imports no project code, so it never
    # holds a stale copy of a workspace's src/ (each stage imports its own).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    log = path.with_suffix(".log")
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        server = subprocess.Popen([sys.executable, str(WARM_SERVER), str(path)], cwd="/",
                                  env=env, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                                  start_new_session=True)
    finally:
        os.close(fd)
    share_autogroup_nice(server.pid)
    return server


def lock_is_free(path: Path) -> bool:
    """Whether no warm process holds the lock of the socket at `path` (kdpipe.ops.warm.serve)."""
    fd = os.open(f"{path}.lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # and with it the lock, if taken
    return True


def send(conn: socket.socket, request: dict) -> None:
    """Length-prefixed JSON, with this process's stdin, stdout and stderr attached."""
    body = json.dumps(request).encode()
    socket.send_fds(conn, [struct.pack("!I", len(body))], [0, 1, 2])
    conn.sendall(body)


def run_warm(conn: socket.socket, argv: list[str], started: float) -> int:
    """The stage's exit code; runs it cold instead if it cannot start warm. The warm process
    replies with the stage's pid (or `cold <why>`), then `exit <code>` when it ends."""
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):  # a warm process refusing may hang up first: read why
        send(conn, {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "umask": umask,
                    "started": started})
    replies = conn.makefile("r")
    try:
        first = replies.readline()
    except OSError:
        first = ""
    if not first.strip().isdigit():  # nothing ran yet, so running it here is safe
        why = first.removeprefix("cold ").strip() or "the warm process went away"
        run_cold(argv, why)
    child = int(first)
    for sig in FORWARDED:
        if signal.getsignal(sig) != signal.SIG_IGN:  # nohup: the stage ignores it too
            signal.signal(sig, lambda signum, frame: os.kill(child, signum))
    status = replies.readline().split()
    if status[:1] != ["exit"]:
        print(f"kdpipe: the warm process went away; the exit status of stage process {child} "
              "is unknown", file=sys.stderr)
        return 1
    return int(status[1])


if __name__ == "__main__":
    main(sys.argv[1:])
