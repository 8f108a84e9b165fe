"""What to record about the machine and the stage's own cost, so that results and timings can
be compared honestly: the software and hardware a result depends on, a stage's wall time and
memory, and how busy the machine was while it ran."""
from __future__ import annotations

import os
import platform
import resource
import time

import psutil
import torch

from kdpipe.core.runtime import Runtime, cpu_flags

# Other work's load per core above which a stage's timings are marked as taken under load: a
# quarter of the machine busy with something else already slows a 2-core stage measurably.
BUSY = 0.25


def environment(runtime: Runtime) -> dict:
    """What the results depend on besides code, params and data."""
    device = runtime.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {
        "torch_version": torch.__version__,
        "device": device.type,
        "device_name": name or platform.machine(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "precision": runtime.precision,
        "cpu_bf16_flags": " ".join(sorted(f for f in cpu_flags() if "bf16" in f)) or "none",
        "compile": runtime.compile,
    }


def stage_cost() -> dict:
    """Wall time since the stage's process started (imports included), its peak resident memory
    so far (Linux reports ru_maxrss in KiB), and the load other work put on the machine (a
    timing taken beside other jobs is slower, and says so)."""
    return {"wall_seconds": round(time.time() - stage_start_time(), 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "other_load_per_core": other_load()}


def stage_start_time() -> float:
    """When the process DVC started for this stage began (seconds since the epoch): the warm
    launcher passes its client's start time, as this process only forked from a warm one."""
    started = os.environ.get("KDPIPE_STAGE_STARTED")
    return float(started) if started else psutil.Process().create_time()


def other_load() -> float:
    """The machine's 1-minute load average beyond this stage's own threads, per core: 0 on an
    otherwise idle machine, 1 when other work keeps every core busy."""
    return round(max(0.0, os.getloadavg()[0] - torch.get_num_threads()) / os.cpu_count(), 2)
