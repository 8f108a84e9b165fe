"""A student epoch through the pipeline's training loop against a bare loop: how much of the
loop's time is not the model's own work (views, normalisation, teacher-cache lookup, the
objective, per-step bookkeeping).

    python benchmarks/loop_ratio.py [--images 45000] [--views 8] [--precision fp32|bf16]

Both loops train the same LightNN (channels-last, batch 128, Adam, the same threads and
precision) on `--images` random uint8 images preloaded; kd reads a cached teacher's logits.
The pipeline's loop is `kdpipe.learn.loop.fit` as a distill stage runs it (cached views with
`--views`, else the plain images; evaluation excluded); the bare loop is forward, loss,
backward and step over a normalised tensor made once, the same loss. Each times its second
epoch (the first warms up kernels and allocations). Prints images/s of both and the ratio;
run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kdpipe.core.config import TrainConfig  # noqa: E402
from kdpipe.core.machine import other_load  # noqa: E402
from kdpipe.core.runtime import Runtime, bf16_rule  # noqa: E402
from kdpipe.data.prepared import MEAN, STD, Normalize, batch_order  # noqa: E402
from kdpipe.data.views import Views  # noqa: E402
from kdpipe.learn.loop import TrainData, fit  # noqa: E402
from kdpipe.learn.methods.kd import KDConfig, SoftTargetKD  # noqa: E402
from kdpipe.learn.objective import Objective, TeacherOutputs  # noqa: E402
from kdpipe.learn.training import seeded_student  # noqa: E402

BATCH = 128
KD = KDConfig(temperature=4.0, soft_target_weight=0.9, ce_weight=0.1)
CPU = torch.device("cpu")


def objective_of(method: str) -> Objective:
    return SoftTargetKD(KD) if method == "kd" else Objective()


def pipeline_images_per_second(x, y, method: str, views: int, runtime: Runtime) -> float:
    """fit() for 2 epochs; images/s of the second (its own train_seconds)."""
    data = TrainData(x, y, x[:0], y[:0], x[:BATCH], y[:BATCH], Normalize(MEAN, STD, CPU))
    rows = len(y) * (views or 1)
    cache = torch.randn(rows, 10)
    teacher = (lambda keys, batch: TeacherOutputs(cache[keys])) if method == "kd" else None
    model = seeded_student("LightNN", 0, 10).to(memory_format=torch.channels_last)
    result = fit(model, objective_of(method), data, TrainConfig(2, 1e-3, BATCH), runtime, 0,
                 teacher=teacher, views=Views.from_params(0, len(y), views, CPU))
    return len(y) / result.history[-1]["train_seconds"]


def bare_images_per_second(x, y, method: str, runtime: Runtime) -> float:
    """Forward, loss, backward, step over batches of a tensor normalised once."""
    inputs = Normalize(MEAN, STD, CPU)(x).contiguous(memory_format=torch.channels_last)
    teacher = torch.randn(len(y), 10)
    model = seeded_student("LightNN", 0, 10).to(memory_format=torch.channels_last).train()
    objective = objective_of(method)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = batch_order(len(y), BATCH, torch.Generator().manual_seed(0))
    seconds = 0.0
    for _ in range(2):  # the first epoch warms up
        start = time.perf_counter()
        for idx in batches:
            with runtime.autocast():
                logits, features = model.forward_with_features(inputs[idx])
            loss = objective(logits.float(), None, y[idx], TeacherOutputs(teacher[idx]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds = time.perf_counter() - start
    return len(y) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=45_000)
    parser.add_argument("--views", type=int, default=8, help="cached views (0: plain images)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()
    runtime = Runtime(CPU, torch.bfloat16 if args.precision == "bf16" else None, False)
    x = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (args.images,))
    print(f"{args.images:,} images, batch {BATCH}, {torch.get_num_threads()} threads, "
          f"{args.precision} (native bf16: {bf16_rule(CPU) or 'no, emulated'}), "
          f"views {args.views}; other load per core before: {other_load()}")
    for method in ("student", "kd"):
        ours = pipeline_images_per_second(x, y, method, args.views, runtime)
        bare = bare_images_per_second(x, y, method, runtime)
        print(f"{method:8} pipeline loop {ours:8,.0f} img/s   bare loop {bare:8,.0f} img/s   "
              f"ratio {ours / bare:.2f}")
    print(f"other load per core after: {other_load()}")


if __name__ == "__main__":
    main()
