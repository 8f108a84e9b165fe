"""What a running stage shows: one flushed line per epoch (or per step of work), always, and on a
terminal also a bar within it (tqdm, refreshed at most 4 times a second). In a log or CI, where
stdout is not a terminal, there is no bar: only the lines, so logs stay readable.

    kd-43  epoch 3/10  loss 0.912  val_acc 68.4%  11,800 img/s  0:14 elapsed  0:33 left

Elapsed and left count this process's work only: a resumed stage estimates what is left from
the epochs it ran itself.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_REFRESH_SECONDS = 0.25


def clock(seconds: float) -> str:
    """0:14, 3:07, 1:02:03."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def say(text: str) -> None:
    print(text, flush=True)


class NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def bar(total: int, label: str, unit: str, stream: TextIO | None = None):
    """A progress bar on a terminal, a no-op otherwise."""
    stream = stream or sys.stderr
    if not stream.isatty():
        return NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit=unit, leave=False, file=stream,
                mininterval=BAR_REFRESH_SECONDS, dynamic_ncols=True)


class EpochProgress:
    """Per-epoch lines and per-step bars for one training run."""

    def __init__(self, label: str, epochs: int, curve: str, first_epoch: int = 1):
        self.label, self.epochs, self.curve = label, epochs, curve
        self.first_epoch = first_epoch
        self.started = time.monotonic()

    def steps(self, epoch: int, total: int):
        return bar(total, f"{self.label} epoch {epoch}/{self.epochs}", "step")

    def epoch_done(self, record: dict, images: int) -> None:
        elapsed = time.monotonic() - self.started
        done_here = record["epoch"] - self.first_epoch + 1
        left = elapsed / done_here * (self.epochs - record["epoch"])
        speed = images / record["train_seconds"]
        say(f"{self.label}  epoch {record['epoch']}/{self.epochs}  "
            f"loss {record['train_loss']:.3f}  {self.curve} {record[self.curve]:.1f}%  "
            f"{speed:,.0f} img/s  {clock(elapsed)} elapsed  {clock(left)} left")
