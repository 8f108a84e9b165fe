"""What fp32, bf16 and torch.compile buy on this machine, for the teacher and the student.

    python benchmarks/precision.py [--steps 30] [--compile] [--out precision.json]

Per model (the tutorial's DeepNN teacher and LightNN student), per precision (fp32; bf16
autocast around the forward pass with the loss in fp32, as the pipeline trains): images/s of a
training step (Adam, batch 128, channels-last, data preloaded) and of inference (batch 256),
medians of `--steps` timed steps after 3 untimed ones. With --compile, the same in fp32 through
torch.compile: the seconds its first step takes (compiling) and its steady images/s, so the
compile cost can be set against the time it saves per epoch (45,000 images). Prints a table and
the CPU (model and bf16 flags) it ran on: bf16 is fast only where the CPU computes it (AMX);
elsewhere it is emulated. Run it on an idle machine.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kdpipe.core.runtime import bf16_rule, cpu_flags  # noqa: E402
from kdpipe.learn.models import DeepNN, LightNN  # noqa: E402

MODELS = {"teacher (DeepNN)": DeepNN, "student (LightNN)": LightNN}
TRAIN_BATCH, INFER_BATCH, EPOCH_IMAGES = 128, 256, 45_000


def autocast_for(precision: str):
    if precision == "bf16":
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext


def timed(step, steps: int) -> tuple[float, float]:
    """(seconds of the first call, median seconds of `steps` calls after 2 more untimed)."""
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def measure(build, precision: str, steps: int, compiled: bool) -> dict:
    torch.manual_seed(0)
    model = build().to(memory_format=torch.channels_last)
    forward = torch.compile(model) if compiled else model
    autocast = autocast_for(precision)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(TRAIN_BATCH, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (TRAIN_BATCH,))
    big = torch.randn(INFER_BATCH, 3, 32, 32).contiguous(memory_format=torch.channels_last)

    def train_step():
        with autocast():
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def infer_step():
        with autocast():
            forward(big)

    model.train()
    first_train, train = timed(train_step, steps)
    model.eval()
    first_infer, infer = timed(infer_step, steps)
    out = {"train_images_per_second": round(TRAIN_BATCH / train, 1),
           "inference_images_per_second": round(INFER_BATCH / infer, 1),
           "epoch_seconds": round(EPOCH_IMAGES * train / TRAIN_BATCH, 1)}
    if compiled:  # the first calls compile (training and inference graphs)
        out["compile_seconds"] = round(first_train + first_infer, 1)
    return out


def machine() -> dict:
    model_name = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                       if line.startswith("model name")), platform.processor())
    return {"cpu": model_name, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "bf16_flags": sorted(f for f in cpu_flags() if "bf16" in f or "amx" in f),
            "native_bf16": bf16_rule(torch.device("cpu")) or "none: bf16 is emulated here"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    results = {"machine": machine(), "models": {}}
    print(json.dumps(results["machine"]))
    print(f"{'model':20} {'variant':14} {'train img/s':>12} {'infer img/s':>12} "
          f"{'epoch s':>8}")
    for name, build in MODELS.items():
        variants = {"fp32": ("fp32", False), "bf16": ("bf16", False)}
        if args.compile:
            variants["fp32 compiled"] = ("fp32", True)
        rows = {}
        for variant, (precision, compiled) in variants.items():
            rows[variant] = measure(build, precision, args.steps, compiled)
            row = rows[variant]
            extra = f"  (compiling: {row['compile_seconds']} s)" if compiled else ""
            print(f"{name:20} {variant:14} {row['train_images_per_second']:>12,.0f} "
                  f"{row['inference_images_per_second']:>12,.0f} {row['epoch_seconds']:>8}"
                  f"{extra}", flush=True)
        results["models"][name] = rows
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
