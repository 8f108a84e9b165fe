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
    """Resolve `cfg.device`, set thread count and fast-math switches, seed every RNG."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda': CUDA is not available on this machine; "
                          "expected auto | cpu here")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    if not use_cuda:
        # fp32 on CPU keeps reruns bit-reproducible; compile is not worth its start-up here.
        return Runtime(torch.device("cpu"), None, False)
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return Runtime(torch.device("cuda"), amp, cfg.compile)


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
    """Wall time since this process started (imports included) and its peak resident memory
    so far (Linux reports ru_maxrss in KiB)."""
    return {"wall_seconds": round(time.time() - psutil.Process().create_time(), 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
