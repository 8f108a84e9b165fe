"""Device choice and the per-device settings that make training fast: the device, the
precision (bf16 where the hardware computes it), threads and the fast-math switches."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from kdpipe.core.config import Config
from kdpipe.core.errors import ConfigError
from kdpipe.core.progress import say


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype, None = full fp32
    compile: bool

    @property
    def precision(self) -> str:
        """What params `precision` resolved to here: bf16 or fp32."""
        return "bf16" if self.amp_dtype == torch.bfloat16 else "fp32"

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def setup(cfg: Config) -> Runtime:
    """Resolve `cfg.device` and `cfg.precision`, set the thread count and the fast-math
    switches."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda': CUDA is not available on this machine; "
                          "expected auto | cpu here")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if use_cuda else "cpu")
    amp_dtype = resolve_precision(cfg.precision, device)
    if not use_cuda:
        # compile is not worth its start-up on CPU (measured: docs/performance.md).
        return Runtime(device, amp_dtype, False)
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    set_tf32(cfg.precision != "fp32")  # fp32 means IEEE fp32: no TF32 tensor cores either
    return Runtime(device, amp_dtype, cfg.compile)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for params `precision`: fp32 -> None; bf16 -> bfloat16 (said once
    when the device has no bf16 hardware: it then runs slower than fp32); auto -> bfloat16
    where the device computes bf16 natively, else None. Decided from the hardware, never from
    a timing, so a run does not depend on how busy the machine was."""
    native = native_bf16(device)
    if precision == "bf16" and not native:  # never where a flag says it is native
        say(f"precision: bf16 on a {device.type} without bf16 hardware is emulated, slower "
            "than fp32 (precision: auto picks fp32 here)")
    if precision == "bf16" or (precision == "auto" and native):
        return torch.bfloat16
    return None


# CPU flags under which oneDNN runs bf16 convolutions and matmuls in hardware, and what they
# were measured to buy for this project's models (docs/performance.md): the AMX tiles, 2.3-3.2x
# faster than fp32 (Intel Xeon); AVX-512 BF16 without AMX, 1.4-2.1x (AMD EPYC, Zen 4).
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware (see bf16_rule)."""
    return bf16_rule(device) is not None


def bf16_rule(device: torch.device) -> str | None:
    """Which rule finds bf16 in `device`'s hardware, in words; None where bf16 would be
    emulated. GPUs: compute capability >= 8.0 (Ampere and later);
    `torch.cuda.is_bf16_supported()` also says yes where bf16 is emulated. CPUs: a flag of
    BF16_CPU_FLAGS."""
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        return f"CUDA capability {capability[0]}.{capability[1]} >= 8.0" \
            if capability >= (8, 0) else None
    found = [flag for flag in BF16_CPU_FLAGS if flag in cpu_flags()]
    return f"CPU flag {found[0]}" if found else None


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as info:
            line = next((ln for ln in info if ln.startswith("flags")), "")
    except OSError:
        return set()
    return set(line.partition(":")[2].split())


def set_tf32(enabled: bool) -> None:
    """TF32 tensor cores for fp32 matmuls and convolutions (10-bit mantissa, fp32 range), through
    the `fp32_precision` API that replaced `allow_tf32` in PyTorch 2.9."""
    mode = "tf32" if enabled else "ieee"
    torch.backends.cuda.matmul.fp32_precision = mode
    torch.backends.cudnn.conv.fp32_precision = mode
