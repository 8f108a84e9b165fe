"""Stages `distill@<method>-<seed>` (a method of `distill.methods`): a fresh student (same
initial weights and batch order as the baseline student of that seed) trained with
cross-entropy plus the method's term against the frozen teacher (its non-target logits
shuffled with `distill.<method>.teacher: shuffled`; none for a control that reads no teacher).

usage: python stages/distill.py <method> <seed>
"""
import sys

import torch

from kdpipe.core.config import Config, as_dict, section
from kdpipe.core.files import read_upstream
from kdpipe.core.paths import MIXING, PREPARED_DIR, TARGETS_DIR, model_file
from kdpipe.core.runtime import setup
from kdpipe.data.mixing import describe
from kdpipe.data.prepared import Prepared
from kdpipe.learn.checkpoint import load_teacher
from kdpipe.learn.methods import registry
from kdpipe.learn.models import feature_shape
from kdpipe.learn.objective import FeatureShapes
from kdpipe.learn.shuffled_teacher import ShuffledTeacher
from kdpipe.learn.teacher_targets import teacher_source
from kdpipe.learn.training import ModelSpec, seeded_model, train_model
from kdpipe.ops.stage import run_stage


def main(cfg: Config) -> None:
    name, seed = sys.argv[1], int(sys.argv[2])
    runtime = setup(cfg)
    prepared = Prepared(PREPARED_DIR)
    mixing = read_upstream(MIXING, "check_params")
    teacher, saved = load_teacher(model_file("teacher", cfg.seed), runtime.device,
                                  cfg.teacher.feature_layer)
    method, settings = registry.method(name), registry.settings(cfg, name)
    shapes = None
    # Probing and building the objective (the hint regressor) draw on their own RNG, so the
    # student's initial weights and dropout masks stay those of the baseline of this seed.
    with torch.random.fork_rng(devices=[]):
        if "features" in method.needs:
            probe = seeded_model(cfg.student, "student", seed, len(prepared.classes),
                                 prepared.image_size)
            shapes = FeatureShapes(feature_shape(probe, prepared.image_size),
                                   feature_shape(teacher, prepared.image_size))
        torch.manual_seed(seed + 2)
        objective = method.objective(settings, shapes)
    source = teacher_source(augment=cfg.data.augment, teacher=teacher, teacher_saved=saved,
                            autocast=runtime.autocast, folder=TARGETS_DIR, needs=objective.needs,
                            device=runtime.device, data_sha256=prepared.digest,
                            views=cfg.data.views,
                            mix=describe(mixing)) \
        if method.needs else None
    kind, description = registry.teacher(cfg, name), method.description
    if kind == "shuffled":
        labels = torch.from_numpy(prepared.splits["train"].labels)
        source = ShuffledTeacher(source, labels, cfg.data.views, seed)
        description += ", on the shuffled teacher (control)"
    params = {"seed": seed, **section(cfg, "device", "precision", "threads", "student",
                                      "teacher.feature_layer", "data.augment", "data.views",
                                      "data.mean", "data.std"), **mixing,
              f"distill.{name}": {**as_dict(settings), "teacher": kind}}
    spec = ModelSpec(name, seed, "student", cfg.student, params, description=description,
                     control=registry.is_control(cfg, name), mixing=mixing)
    metrics = train_model(spec, cfg, runtime, objective, prepared, source,
                          saved if method.needs else None)
    print(f"{name} (seed {seed}): test accuracy {metrics['test_acc']:.2f}%")


if __name__ == "__main__":
    run_stage(main)
