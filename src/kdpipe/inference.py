"""What a trained model costs to run: size on disk, latency at batch 1, throughput at batch
256, on the device the stage runs on (medians of repeated timed runs after warm-up)."""
from __future__ import annotations

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


def inference_cost(model: nn.Module, saved_file: Path, device: torch.device, autocast,
                   image_size: int = 32) -> dict:
    model.eval()
    image = torch.randn(1, 3, image_size, image_size, device=device)
    image = image.contiguous(memory_format=torch.channels_last)
    batch = image.expand(THROUGHPUT_BATCH, -1, -1, -1).contiguous(
        memory_format=torch.channels_last)
    latency = median_seconds(model, image, LATENCY_RUNS, autocast)
    throughput = THROUGHPUT_BATCH / median_seconds(model, batch, THROUGHPUT_RUNS, autocast)
    return {"size_mb": round(saved_file.stat().st_size / 2**20, 3),
            "inference_ms_batch1": round(latency * 1000, 3),
            "inference_images_per_second": round(throughput, 1)}
