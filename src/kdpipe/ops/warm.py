"""The warm process behind kdpipe.ops.launch: imports the heavy libraries once, then forks one
child per stage request, runs the stage script in it and tells the launcher its exit status.

    python src/kdpipe/ops/warm.py <socket path>     (started by kdpipe.ops.launch, not by hand)

Fork safety: the warm process imports but never computes, so at fork time it holds no CUDA
context and no OpenMP/intra-op thread pool (the only other threads are the BLAS and allocator
helpers that numpy and pyarrow start at import, native threads which handle fork themselves).
MLflow's telemetry, which would start Python threads, is off (MLflow decides at import, so it is
off in the stages too). Before each fork it checks that it runs one Python thread and that CUDA
is not initialised; if not, it asks the launcher to run the stage cold. It imports no project
code: each stage imports its workspace's own src/ after the fork.

It exits after IDLE_SECONDS (or $KDPIPE_WARM_IDLE) with no stage running or requested; one lock
file, which no stage inherits, makes sure a single warm process serves a socket.
KDPIPE_WARM_PRELOAD=0 skips the imports (tests of the launcher need none).
"""
from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import runpy
import select
import signal
import socket
import struct
import sys
import threading
import traceback
import warnings

IDLE_SECONDS = 300  # long enough to bridge the gaps between stages, short enough to go away
THREAD_WAIT = 300  # seconds a stage's exit waits for its threads (or $KDPIPE_THREAD_WAIT)

PRELOAD = ("numpy", "yaml", "psutil", "PIL.Image", "torch", "torch._dynamo", "torch.export",
           "torch.optim", "mlflow", "mlflow.pytorch", "mlflow.store.tracking.sqlalchemy_store",
           "mlflow.store.model_registry.sqlalchemy_store", "sqlalchemy.dialects.sqlite",
           "alembic.script", "scipy.stats", "matplotlib.pyplot")


def preload() -> None:
    import importlib

    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"  # else its threads would make forks unsafe
    import matplotlib

    matplotlib.use("Agg")  # as kdpipe.analysis.figures: files only, no display
    for name in PRELOAD:
        with contextlib.suppress(ImportError):  # a stage that needs it imports it, and fails
            importlib.import_module(name)
    # MLflow scans every installed package's metadata (~1 s) the first time it logs a model,
    # to warn about requirement mismatches; do it once here for every stage.
    with contextlib.suppress(Exception):
        from mlflow.utils.requirements_utils import _init_packages_to_modules_map

        _init_packages_to_modules_map()


def serve(path: str) -> None:
    lock = os.open(path + ".lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"{path}: another warm process holds the lock; leaving it to serve", flush=True)
        return
    if os.environ.get("KDPIPE_WARM_PRELOAD") != "0":
        preload()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    try:
        Stages(listener, lock).serve(float(os.environ.get("KDPIPE_WARM_IDLE", IDLE_SECONDS)))
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # before the lock goes with this process


class Stages:
    """The stages forked from here, each with its launcher's connection, which is told the
    stage's exit status when the stage ends (only a parent can learn it)."""

    def __init__(self, listener: socket.socket, lock: int):
        self.listener = listener
        self.running: dict[int, socket.socket] = {}
        # SIGCHLD writes a byte to this pipe, so select() wakes up when a stage ends.
        self.wakeup, wakeup_w = os.pipe()
        os.set_blocking(wakeup_w, False)
        signal.set_wakeup_fd(wakeup_w)
        self.inherited_sigchld = signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self.own_fds = (lock, self.wakeup, wakeup_w)

    def serve(self, idle: float) -> None:
        while ready := select.select([self.listener, self.wakeup], [], [],
                                     None if self.running else idle)[0]:
            if self.wakeup in ready:
                os.read(self.wakeup, 4096)
                self.report_ended()
            if self.listener in ready:
                self.start(self.listener.accept()[0])

    def start(self, conn: socket.socket) -> None:
        hazard = fork_hazard()
        if hazard:
            with contextlib.suppress(OSError):
                conn.sendall(f"cold {hazard}\n".encode())
            conn.close()
            return
        pid = os.fork()
        if pid == 0:
            self.leave()
            run_child(conn)  # never returns
        self.running[pid] = conn

    def leave(self) -> None:
        """In a child: drop what belongs to the warm process. Above all the lock: a stage
        holding it would keep any new warm process out after this one is gone."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, self.inherited_sigchld)  # as a cold stage has it
        self.listener.close()
        for fd in self.own_fds:
            os.close(fd)
        for conn in self.running.values():
            conn.close()

    def report_ended(self) -> None:
        for pid in list(self.running):  # not waitpid(-1): a library's child is not ours to reap
            ended, status = os.waitpid(pid, os.WNOHANG)
            if not ended:
                continue
            code = os.waitstatus_to_exitcode(status)
            conn = self.running.pop(pid)
            with contextlib.suppress(OSError):  # the launcher is gone
                conn.sendall(f"exit {128 - code if code < 0 else code}\n".encode())
            conn.close()


def fork_hazard() -> str | None:
    """Why a child forked now would be broken, if it would."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "the warm process has initialised CUDA, which a forked stage cannot use"
    if threading.active_count() > 1:
        names = ", ".join(t.name for t in threading.enumerate())
        return f"the warm process runs {threading.active_count()} threads ({names})"
    return None


def run_child(conn: socket.socket) -> None:
    """In the forked child: take over the client's streams and environment, run the stage
    script as `__main__` and exit as Python would (threads finished, atexit handlers run),
    without unwinding into the warm process's loop."""
    code = 1
    try:
        request = receive(conn)
        conn.sendall(f"{os.getpid()}\n".encode())
        threading.Thread(target=stop_when_orphaned, args=(conn,), daemon=True).start()
        code = run_script(request)
    except BaseException:  # noqa: BLE001 - a broken request; the stage's own errors end below
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def receive(conn: socket.socket) -> dict:
    header, fds, _, _ = socket.recv_fds(conn, 4, 3)
    for target, fd in enumerate(fds):  # stdin, stdout, stderr of the client
        os.dup2(fd, target)
        os.close(fd)
    size = struct.unpack("!I", header)[0]
    body = b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ConnectionError("the launcher hung up")
        body += chunk
    return json.loads(body)


def run_script(request: dict) -> int:
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ["KDPIPE_STAGE_STARTED"] = str(request["started"])
    script = os.path.abspath(request["argv"][0])
    extra = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:0] = [os.path.dirname(script), *extra]  # as `python <script>` would have it
    sys.argv = [script, *request["argv"][1:]]
    sys.stdout.reconfigure(line_buffering=sys.stdout.isatty())
    try:
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as done:
        code = exit_code(done.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 130
    except BaseException:  # noqa: BLE001 - an uncaught error: traceback and 1, as in Python
        traceback.print_exc()
        code = 1
    finish_threads()
    return code


def stop_when_orphaned(conn: socket.socket) -> None:
    """If the launcher goes away (killed by DVC or the user), interrupt the stage as SIGTERM
    would have: it marks its MLflow run KILLED and keeps its checkpoint."""
    with contextlib.suppress(OSError):
        while conn.recv(1):
            pass
    os.kill(os.getpid(), signal.SIGTERM)


def exit_code(value) -> int:
    """What the interpreter makes of sys.exit(value)."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    print(value, file=sys.stderr)
    return 1


def finish_threads() -> None:
    """Shut down as the interpreter does at exit: threading's shutdown, which runs the callbacks
    registered with threading._register_atexit (they stop idle ThreadPoolExecutor workers) and
    then joins the non-daemon threads, then the atexit handlers. The threads get THREAD_WAIT
    seconds: a stage must end rather than hang."""
    wait = float(os.environ.get("KDPIPE_THREAD_WAIT", THREAD_WAIT))
    # In a daemon thread, which threading's shutdown does not wait for, so that this one can
    # stop waiting.
    shutdown = threading.Thread(target=threading._shutdown, daemon=True)
    shutdown.start()
    shutdown.join(wait)
    if shutdown.is_alive():
        names = ", ".join(t.name for t in threading.enumerate()
                          if not t.daemon and t is not threading.current_thread())
        print(f"kdpipe: threads still running {wait:g} s after the stage ended ({names}); "
              "exiting without them", file=sys.stderr)
    atexit._run_exitfuncs()


if __name__ == "__main__":
    sys.path.pop(0)  # this file's folder (src/kdpipe) must not shadow any library's module
    warnings.filterwarnings("ignore", message=".*use of fork\\(\\) may lead to deadlocks.*")
    serve(sys.argv[1])
