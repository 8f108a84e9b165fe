"""Stages `distill@<method>-<seed>` (kd, cosine, hint): a fresh LightNN (same initial weights
and batch order as the baseline student of that seed) trained with cross-entropy plus the
method's term against the frozen teacher.

usage: python stages/distill.py kd|cosine|hint <seed>
"""
import sys

import torch

from kdpipe.checkpoint import load_model
from kdpipe.cli import run_stage
from kdpipe.config import load_config, section
from kdpipe.data import Prepared
from kdpipe.losses import build_objective
from kdpipe.paths import PREPARED_DIR, TARGETS_DIR, model_file
from kdpipe.runs import ModelSpec, train_model
from kdpipe.runtime import setup
from kdpipe.targets import teacher_source


def main() -> None:
    method, seed = sys.argv[1], int(sys.argv[2])
    cfg = load_config()
    runtime = setup(cfg)
    # The regressor (hint) gets its own seed so that building it leaves the global RNG, and
    # so the student's dropout masks, the same as for the other methods.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)
        objective = build_objective(method, cfg.distill)
    prepared = Prepared(PREPARED_DIR)
    teacher, saved = load_model(model_file("teacher", cfg.seed), runtime.device)
    source = teacher_source(cfg.data.augment, teacher, saved, runtime.autocast, TARGETS_DIR,
                            objective.needs, runtime.device, prepared.digest)
    params = {"seed": seed, **section(cfg, "device", "threads", "student",
                                      f"distill.{method}", "data.augment")}
    spec = ModelSpec(method, seed, "LightNN", cfg.student, params)
    metrics = train_model(spec, cfg, runtime, objective, prepared, source, saved)
    print(f"{method} (seed {seed}): test accuracy {metrics['test_acc']:.2f}%")


if __name__ == "__main__":
    run_stage(main)
