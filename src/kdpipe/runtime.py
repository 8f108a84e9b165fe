"""Device choice and the per-device settings that make training fast, plus what to record
about the machine so results can be compared honestly."""
from __future__ import annotations

import contextlib
import os
import platform
import random
import resource
import time
from dataclasses import dataclass

import numpy as np
import psutil
import torch

from kdpipe.config import Config
from kdpipe.errors import ConfigError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype, None = full fp32
    compile: bool

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def setup(cfg: Config) -> Runtime:
    """Resolve `cfg.device`, set the thread count and the fast-math switches."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda': CUDA is not available on this machine; "
                          "expected auto | cpu here")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if not use_cuda:
        # fp32 on CPU keeps reruns bit-reproducible; compile is not worth its start-up here.
        return Runtime(torch.device("cpu"), None, False)
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    set_tf32(True)
    return Runtime(torch.device("cuda"), native_bf16(), cfg.compile)


def native_bf16() -> torch.dtype | None:
    """bf16 autocast only where the GPU computes bf16 natively (compute capability >= 8.0,
    Ampere and later). `torch.cuda.is_bf16_supported()` also says yes where bf16 is emulated,
    which is slower than plain fp32."""
    return torch.bfloat16 if torch.cuda.get_device_capability() >= (8, 0) else None


def set_tf32(enabled: bool) -> None:
    """TF32 tensor cores for fp32 matmuls and convolutions (10-bit mantissa, fp32 range), through
    the `fp32_precision` API that replaced `allow_tf32` in PyTorch 2.9."""
    mode = "tf32" if enabled else "ieee"
    torch.backends.cuda.matmul.fp32_precision = mode
    torch.backends.cudnn.conv.fp32_precision = mode


@contextlib.contextmanager
def exact_fp32(device: torch.device):
    """Full fp32 (no autocast, no TF32) inside the block, e.g. for outputs stored as exact."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    set_tf32(False)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
        "amp_dtype": str(runtime.amp_dtype).replace("torch.", "") if runtime.amp_dtype else "fp32",
        "compile": runtime.compile,
    }


def stage_cost() -> dict:
    """Wall time since the stage's process started (imports included) and its peak resident
    memory so far (Linux reports ru_maxrss in KiB)."""
    return {"wall_seconds": round(time.time() - stage_start_time(), 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def stage_start_time() -> float:
    """When the process DVC started for this stage began (seconds since the epoch): the warm
    launcher passes its client's start time, as this process only forked from a warm one."""
    started = os.environ.get("KDPIPE_STAGE_STARTED")
    return float(started) if started else psutil.Process().create_time()
