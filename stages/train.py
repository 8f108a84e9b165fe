"""Stages `train_teacher` and `train_student@<seed>`: plain cross-entropy training. With
`teacher.pretrained`, the teacher stage loads those weights instead and trains no epoch: it is
evaluated, recorded and logged like a trained teacher.

usage: python stages/train.py teacher          (seed: params `seed`)
       python stages/train.py student <seed>   (one of params `seeds`)
"""
import sys
from dataclasses import replace

from kdpipe.core.config import Config, as_dict, section
from kdpipe.core.files import read_upstream
from kdpipe.core.paths import MIXING, PREPARED_DIR
from kdpipe.core.progress import say
from kdpipe.core.runtime import setup
from kdpipe.data.prepared import Prepared
from kdpipe.learn.objective import Objective
from kdpipe.learn.pretrained import pretrained_weights
from kdpipe.learn.training import ModelSpec, seeded_model, train_model, view_count
from kdpipe.ops.stage import run_stage
from kdpipe.tracking import store

DESCRIPTIONS = {"teacher": "teacher (cross-entropy)",
                "student": "baseline student (cross-entropy)"}


def main(cfg: Config) -> None:
    name = sys.argv[1]
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else cfg.seed
    runtime = setup(cfg)
    prepared = Prepared(PREPARED_DIR)
    # Plain training taps no features: the feature layer is the distilling stages' param.
    train = replace(getattr(cfg, name), feature_layer="")
    # The teacher's views are its own (teacher.views), unmixed; students' data.views, mixed as
    # data/mixing.json says.
    mixing = read_upstream(MIXING, "check_params") if name == "student" else None
    views = ("data.views",) if name == "student" else ()
    params = {"seed": seed, name: {k: v for k, v in as_dict(train).items() if k != "feature_layer"},
              **section(cfg, "device", "precision", "threads", "data.augment", *views,
                        "data.mean", "data.std"), **(mixing or {}),
              # The views are params `seed`'s (the same for every model), not the model's seed
              **({"views_seed": cfg.seed} if view_count(name, cfg) else {})}
    spec = ModelSpec(name, seed, name, train, params, description=DESCRIPTIONS[name],
                     mixing=mixing)
    if name == "teacher" and cfg.teacher.pretrained:
        path = store.repo_root() / cfg.teacher.pretrained
        model = seeded_model(train, name, seed, len(prepared.classes), prepared.image_size)
        weights, sha256 = pretrained_weights(path, model.model, cfg.teacher.arch)
        say(f"teacher: pretrained weights from {cfg.teacher.pretrained} (sha256 {sha256[:12]}),"
            " no training")
        spec = replace(spec, train=replace(train, epochs=0), init=weights,
                       tags={"teacher.pretrained": cfg.teacher.pretrained,
                             "teacher.pretrained_sha256": sha256})
    metrics = train_model(spec, cfg, runtime, Objective(), prepared)
    print(f"{name} (seed {seed}): test accuracy {metrics['test_acc']:.2f}%")


if __name__ == "__main__":
    run_stage(main)
