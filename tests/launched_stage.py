"""A stage script for tests/test_launch.py: prints what it can see of its process as one JSON
line, then does what its first argument says. Imports only the standard library."""
import json
import os
import resource
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor


def target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def autogroup() -> int | None:
    """The file reads empty in the kernel's default autogroup (a session never setsid)."""
    try:
        return int(open("/proc/self/autogroup").read().split()[-1])
    except (OSError, IndexError):
        return None


print(json.dumps({
    "pid": os.getpid(), "ppid": os.getppid(), "affinity": sorted(os.sched_getaffinity(0)),
    "nice": os.getpriority(os.PRIO_PROCESS, 0),
    "autogroup": autogroup(),
    "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
    "hup_ignored": signal.getsignal(signal.SIGHUP) == signal.SIG_IGN,
    "fds": [target(fd) for fd in os.listdir("/proc/self/fd")]}), flush=True)
action = sys.argv[1]
if action == "wait":  # until the test creates the file
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.02)
elif action == "executor":  # kept by a library, as MLflow keeps its download pool
    threading.pool = ThreadPoolExecutor(1)
    threading.pool.submit(print, "submitted").result()
elif action == "stuck":
    threading.Thread(target=threading.Event().wait, name="stuck").start()
