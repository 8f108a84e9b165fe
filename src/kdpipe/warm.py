"""The warm process behind kdpipe.launch: imports the heavy libraries once, then forks one
child per stage request and runs the stage script in it.

    python src/kdpipe/warm.py <socket path>     (started by kdpipe.launch, not by hand)

Fork safety: the warm process imports but never computes, so at fork time it holds no CUDA
context and no OpenMP/intra-op thread pool (the only other threads are the BLAS and allocator
helpers that numpy and pyarrow start at import, which handle fork themselves). It imports no
project code: each stage imports its workspace's own src/ after the fork. It exits after
IDLE_SECONDS without a request; one lock file makes sure a single warm process serves a socket.
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

PRELOAD = ("numpy", "yaml", "psutil", "PIL.Image", "torch", "torch._dynamo", "torch.export",
           "torch.optim", "mlflow", "mlflow.pytorch", "mlflow.store.tracking.sqlalchemy_store",
           "mlflow.store.model_registry.sqlalchemy_store", "sqlalchemy.dialects.sqlite",
           "alembic.script", "scipy.stats", "matplotlib.pyplot")


def preload() -> None:
    import importlib

    import matplotlib

    matplotlib.use("Agg")  # as kdpipe.figures: files only, no display
    for name in PRELOAD:
        with contextlib.suppress(ImportError):  # a stage that needs it imports it, and fails
            importlib.import_module(name)
    # MLflow scans every installed package's metadata (~1 s) the first time it logs a model,
    # to warn about requirement mismatches; do it once here for every stage.
    with contextlib.suppress(Exception):
        from mlflow.utils.requirements_utils import _init_packages_to_modules_map

        _init_packages_to_modules_map()


def serve(path: str) -> None:
    with open(path + ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # another warm process serves this socket
        preload()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(64)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
        try:
            while select.select([listener], [], [], IDLE_SECONDS)[0]:
                conn, _ = listener.accept()
                if os.fork() == 0:
                    listener.close()
                    run_child(conn)  # never returns
                conn.close()
        finally:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def run_child(conn: socket.socket) -> None:
    """In the forked child: take over the client's streams and environment, run the stage
    script as `__main__`, report its exit code, and exit as Python would (threads joined,
    atexit handlers run), without unwinding into the warm process's loop."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # stages wait for their own subprocesses
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
        with contextlib.suppress(OSError):
            conn.sendall(f"exit {code}\n".encode())
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
    """What interpreter shutdown does before exiting: join non-daemon threads, run atexit."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()


if __name__ == "__main__":
    sys.path.pop(0)  # this file's folder (src/kdpipe) must not shadow any library's module
    warnings.filterwarnings("ignore", message=".*use of fork\\(\\) may lead to deadlocks.*")
    serve(sys.argv[1])
