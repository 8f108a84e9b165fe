"""Stages `train_teacher` and `train_student@<seed>`: plain cross-entropy training.

usage: python stages/train.py teacher          (seed: params `seed`)
       python stages/train.py student <seed>   (one of params `seeds`)
"""
import sys

from kdpipe.cli import run_stage
from kdpipe.config import load_config, section
from kdpipe.data import Prepared
from kdpipe.losses import Objective
from kdpipe.paths import PREPARED_DIR
from kdpipe.runs import ModelSpec, train_model
from kdpipe.runtime import setup

ARCH = {"teacher": "DeepNN", "student": "LightNN"}


def main() -> None:
    name = sys.argv[1]
    cfg = load_config()
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else cfg.seed
    runtime = setup(cfg)
    params = {"seed": seed, **section(cfg, "device", "threads", name, "data.augment")}
    spec = ModelSpec(name, seed, ARCH[name], getattr(cfg, name), params)
    metrics = train_model(spec, cfg, runtime, Objective(), Prepared(PREPARED_DIR))
    print(f"{name} (seed {seed}): test accuracy {metrics['test_acc']:.2f}%")


if __name__ == "__main__":
    run_stage(main)
