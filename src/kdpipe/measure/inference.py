"""What a trained model costs to run: size on disk, latency at batch 1, throughput at batch
256, on the device the stage runs on (medians of repeated timed runs after warm-up), in fp32
and, where params `precision` resolved to bf16 (kdpipe.core.runtime), in bf16 too."""
from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path

import torch
from torch import nn

LATENCY_RUNS = 50     # batch-1 forward passes timed (each well under a millisecond to ~5 ms)
THROUGHPUT_RUNS = 5   # batch-256 forward passes timed (up to ~0.5 s each for the teacher on CPU)
THROUGHPUT_BATCH = 256


@torch.no_grad()
def median_seconds(model: nn.Module, batch: torch.Tensor, runs: int, autocast) -> float:
    for _ in range(2):  # warm-up: first calls pick kernels and allocate
        with autocast():
            model(batch)
    times = []
    for _ in range(runs):
        if batch.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast():
            model(batch)
        if batch.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def inference_cost(model: nn.Module, saved_file: Path, device: torch.device,
                   image_size: int = 32, bf16: bool = False) -> dict:
    """Size, batch-1 latency and batch-256 throughput in fp32, and with `bf16` (the stage runs
    in bf16) also in bf16 (`*_bf16`), so a report shows what bf16 buys at inference."""
    model.eval()
    image = torch.randn(1, 3, image_size, image_size, device=device)
    image = image.contiguous(memory_format=torch.channels_last)
    batch = image.expand(THROUGHPUT_BATCH, -1, -1, -1).contiguous(
        memory_format=torch.channels_last)
    cost = {"size_mb": round(saved_file.stat().st_size / 2**20, 3)}
    precisions = {"": contextlib.nullcontext}
    if bf16:
        precisions["_bf16"] = lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    for suffix, autocast in precisions.items():
        latency = median_seconds(model, image, LATENCY_RUNS, autocast)
        throughput = THROUGHPUT_BATCH / median_seconds(model, batch, THROUGHPUT_RUNS, autocast)
        cost |= {f"inference_ms_batch1{suffix}": round(latency * 1000, 3),
                 f"inference_images_per_second{suffix}": round(throughput, 1)}
    return cost
