"""What showing progress costs, against a student epoch on this machine.

    python benchmarks/progress_cost.py [--images 45000]

Times one student epoch (LightNN, batch 128, `--images` random images preloaded, as the
pipeline trains) without progress, then the progress calls of that epoch on their own, on a
pseudo-terminal (the costly case: a tqdm bar redrawn 4 times a second, plus the epoch line):
one update per step, the close, the line. Prints both and the ratio.
"""
from __future__ import annotations

import argparse
import os
import pty
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kdpipe.core.config import TrainConfig  # noqa: E402
from kdpipe.core.progress import EpochProgress  # noqa: E402
from kdpipe.core.runtime import Runtime  # noqa: E402
from kdpipe.data.prepared import batch_order  # noqa: E402
from kdpipe.learn.loop import TrainData, fit  # noqa: E402
from kdpipe.learn.objective import Objective  # noqa: E402
from kdpipe.learn.training import seeded_student  # noqa: E402


def student_epoch_seconds(images: int) -> tuple[float, int]:
    x = torch.randn(images, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (images,))
    empty = x[:0]
    data = TrainData(x, y, empty, y[:0], x[:1000], y[:1000])
    model = seeded_student("LightNN", 0, 10).to(memory_format=torch.channels_last)
    cfg = TrainConfig(epochs=1, lr=1e-3, batch_size=128)
    result = fit(model, Objective(), data, cfg, Runtime(torch.device("cpu"), None, False), 0)
    return result.train_seconds, len(batch_order(images, 128, torch.Generator()))


def progress_seconds(steps: int, epoch_seconds: float) -> float:
    """The progress calls of one epoch whose steps are spread over `epoch_seconds`, drawn on a
    pseudo-terminal; only the time inside the calls is counted."""
    main, terminal = pty.openpty()
    stream = os.fdopen(terminal, "w")
    saved, sys.stderr = sys.stderr, stream
    try:
        progress = EpochProgress("student-42", 10, "val_acc")
        spent, gap = 0.0, epoch_seconds / steps
        start = time.perf_counter()
        bar = progress.steps(1, steps)
        spent += time.perf_counter() - start
        for _ in range(steps):
            time.sleep(gap)  # the training step, not counted
            start = time.perf_counter()
            bar.update()
            spent += time.perf_counter() - start
        start = time.perf_counter()
        bar.close()
        progress.epoch_done({"epoch": 1, "train_loss": 1.0, "val_acc": 50.0,
                             "train_seconds": epoch_seconds}, steps * 128)
        return spent + time.perf_counter() - start
    finally:
        sys.stderr = saved
        stream.close()
        os.close(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=45_000)
    args = parser.parse_args()
    epoch, steps = student_epoch_seconds(args.images)
    cost = progress_seconds(steps, epoch)
    print(f"student epoch: {epoch:.2f} s ({steps} steps); progress on a terminal: "
          f"{cost * 1000:.1f} ms = {100 * cost / epoch:.3f}% of the epoch")


if __name__ == "__main__":
    main()
