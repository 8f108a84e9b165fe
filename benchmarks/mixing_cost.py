"""What mixed views (data.mix) cost over plain views: a student epoch through the pipeline's
loop, and the teacher's pass over the views that teacher_targets makes.

    python benchmarks/mixing_cost.py [--images 45000] [--views 8] [--teacher-images 2000]
                                     [--precision fp32|bf16] [--rounds 3]

The student: LightNN distilled with kd from cached logits, `--views` views, batch 128, through
`kdpipe.learn.loop.fit`; the second epoch timed (the first warms up). The teacher: DeepNN's
pass over `--teacher-images` images x `--views` views (`compute_targets`, as the stage runs it).
Plain, mixup and CutMix in turn, `--rounds` times; prints each one's median time and its ratio
to plain. Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kdpipe.core.config import TrainConfig  # noqa: E402
from kdpipe.core.machine import other_load  # noqa: E402
from kdpipe.core.runtime import Runtime, bf16_rule  # noqa: E402
from kdpipe.data.prepared import MEAN, STD, Normalize  # noqa: E402
from kdpipe.data.views import Views  # noqa: E402
from kdpipe.learn.loop import TrainData, fit  # noqa: E402
from kdpipe.learn.methods.kd import KDConfig, SoftTargetKD  # noqa: E402
from kdpipe.learn.models import DeepNN, Tapped  # noqa: E402
from kdpipe.learn.objective import TeacherOutputs  # noqa: E402
from kdpipe.learn.teacher_targets import compute_targets  # noqa: E402
from kdpipe.learn.training import seeded_student  # noqa: E402

CPU = torch.device("cpu")
MODES = ("none", "mixup", "cutmix")


def student_epoch_seconds(x, y, views: Views, runtime: Runtime) -> float:
    data = TrainData(x, y, x[:0], y[:0], x[:128], y[:128], Normalize(MEAN, STD, CPU))
    cache = torch.randn(len(y) * views.count, 10)
    model = seeded_student("LightNN", 0, 10).to(memory_format=torch.channels_last)
    kd = SoftTargetKD(KDConfig(temperature=4.0, soft_target_weight=0.9, ce_weight=0.1))
    result = fit(model, kd, data, TrainConfig(2, 1e-3, 128), runtime, 0,
                 teacher=lambda keys, batch: TeacherOutputs(cache[keys]), views=views)
    return result.history[-1]["train_seconds"]


def teacher_pass_seconds(x, views: Views, runtime: Runtime) -> float:
    torch.manual_seed(0)
    teacher = Tapped(DeepNN(), None).to(memory_format=torch.channels_last)
    start = time.perf_counter()
    compute_targets(teacher, x, Normalize(MEAN, STD, CPU), runtime.autocast, views,
                    features=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=45_000)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--teacher-images", type=int, default=2_000)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runtime = Runtime(CPU, torch.bfloat16 if args.precision == "bf16" else None, False)
    x = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (args.images,))
    print(f"{torch.get_num_threads()} threads, {args.precision} (native bf16: "
          f"{bf16_rule(CPU) or 'no'}), {args.views} views; other load per core before: "
          f"{other_load()}")
    # A throwaway run first: the process's first training run pays one-off costs (allocator,
    # kernel selection) that would otherwise be charged to plain views.
    student_epoch_seconds(x[:5000], y[:5000], Views.make(0, 5000, args.views, CPU), runtime)
    times = {mode: {"epoch": [], "teacher": []} for mode in MODES}
    for _ in range(args.rounds):  # the modes in turn, so that drifts in the host hit all alike
        for mode in MODES:
            mixing = {"data.mix": mode, "data.mix_alpha": 1.0}
            views = Views.from_params(0, args.images, args.views, CPU, mixing)
            times[mode]["epoch"].append(student_epoch_seconds(x, y, views, runtime))
            small = Views.from_params(0, args.teacher_images, args.views, CPU, mixing)
            times[mode]["teacher"].append(
                teacher_pass_seconds(x[:args.teacher_images], small, runtime))
    median = {mode: {k: statistics.median(v) for k, v in t.items()} for mode, t in times.items()}
    plain = median["none"]
    for mode, m in median.items():
        per_million = m["teacher"] / (args.teacher_images * args.views) * 1e6
        print(f"{mode:7} student epoch {m['epoch']:6.1f} s ({m['epoch'] / plain['epoch']:.2f}x "
              f"plain)   teacher pass {per_million:6,.0f} s per million views "
              f"({m['teacher'] / plain['teacher']:.2f}x plain)   medians of {args.rounds}")
    print(f"other load per core after: {other_load()}")


if __name__ == "__main__":
    main()
