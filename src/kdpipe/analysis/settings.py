"""Which trained models are one setting, and which settings a sweep may compare.

A setting is a model (student, kd, dkd, ...) and the params its stage read; the same setting in
several experiments (restored from DVC's cache, or trained on other seeds) is one, its per-seed
scores merged. Settings compare where they share data, teacher and device (the common params)
and are scored on the sweep's seeds: the workspace's `seeds`. Seeds are paired, so a setting
trained on some of them still compares over those; only a setting trained on all of them may be
chosen (means over different seeds do not rank).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from kdpipe.measure.fidelity import FIDELITY_KEYS

# must match across a sweep: these keys and sections (`seeds` is not among them: scores pair
# per seed) ...
COMMON_KEYS = ("seed", "device", "precision", "threads")
COMMON_SECTIONS = ("data.", "teacher.")
# ... but for the students' own inputs: which views they see and how they are mixed are part of
# a recipe, compared like the `student` section (the teacher trains on its own teacher.views)
STUDENT_DATA = ("data.views", "data.mix", "data.mix_alpha")


def is_common(key: str) -> bool:
    """Whether params `key` must be the same for two settings to compare (data, teacher,
    device), rather than be part of a recipe."""
    return (key in COMMON_KEYS or key.startswith(COMMON_SECTIONS)) and key not in STUDENT_DATA


def common_of(params: dict) -> dict:
    """The common part of flattened params (is_common)."""
    return {k: v for k, v in params.items() if is_common(k)}


def in_recipe(key: str) -> bool:
    """Whether params `key` is part of a student's training recipe."""
    return key.startswith("student.") or key in STUDENT_DATA


@dataclass
class Setting:
    """One model trained with one setting, over seeds."""
    model: str              # student, kd, dkd, ...
    setting: dict           # the params it read (flattened), common ones excluded
    common: dict            # data, teacher, seed, device: what makes settings comparable
    val: dict[str, float]   # seed -> validation accuracy
    test: dict[str, float]  # seed -> test accuracy
    experiment: str
    fidelity: dict = field(default_factory=dict)  # mean agreement, kl_to_teacher, test_ece
    control: bool = False   # a baseline recipe that is not plain training (tfkd, shuffled, ...)
    complete: bool = True   # trained on every seed of the sweep: it may be chosen

    @property
    def is_baseline(self) -> bool:
        return self.model == "student" or self.control

    @property
    def recipe(self) -> dict:
        return {k: v for k, v in self.setting.items() if in_recipe(k)}

    def mean_val(self) -> float:
        return sum(self.val.values()) / len(self.val)

    def on(self, seeds: set[str]) -> Setting | None:
        """The setting scored on `seeds` only (None where it has none of them)."""
        val = {s: v for s, v in self.val.items() if s in seeds}
        return replace(self, val=val, test={s: self.test[s] for s in val},
                       complete=set(val) == seeds) if val else None


def reads(model: str, key: str) -> bool:
    """Whether `model`'s training stage reads params `key` (besides the common ones)."""
    own = model != "student" and key.startswith(f"distill.{model}.")
    return in_recipe(key) or own


def trained_models(found: list[tuple[str, dict, dict]]) -> list[Setting]:
    """Every setting in the experiments `found` ((name, flattened params, models.json)); one
    trained in several keeps the first experiment's name and scores per seed."""
    unique: dict[str, Setting] = {}
    for name, params, models in found:
        params = as_read(params)
        common = common_of(params)
        for model, row in models.items():
            if model == "teacher" or "val_acc_per_seed" not in row:
                continue
            setting = {k: v for k, v in params.items() if reads(model, k)}
            key = json.dumps([model, normal(setting), normal(common)], sort_keys=True,
                             default=str)
            fidelity = {k: row[k] for k in FIDELITY_KEYS if k in row}
            new = Setting(model, setting, common, row["val_acc_per_seed"],
                          row["test_acc_per_seed"], name, fidelity, row.get("control", False))
            old = unique.setdefault(key, new)
            if old is not new:  # more seeds of one setting
                old.val = new.val | old.val
                old.test = new.test | old.test
    return list(unique.values())


def sweep_seeds(found: list[tuple[str, dict, dict]]) -> set[str]:
    """The seeds the sweep compares on: the first experiment's (the workspace's) `seeds`, or
    where its params lack them, those its models were trained on."""
    _, params, models = found[0]
    return {str(s) for s in params["seeds"]} if "seeds" in params else trained_on(models)


def trained_on(models: dict) -> set[str]:
    """The seeds of an experiment's models (its metrics/models.json)."""
    return {s for row in models.values() for s in row.get("val_acc_per_seed", {})}


def comparable(found: list[tuple[str, dict, dict]]) -> tuple[list[Setting], int]:
    """The settings trained on the first experiment's (the workspace's) data, teacher and
    device, scored on its seeds, and how many experiments were left out for differing there or
    sharing none of its seeds: scores on other data, from another teacher or on other seeds do
    not compare."""
    workspace, seeds = common_of(found[0][1]), sweep_seeds(found)
    left_out = {name for name, params, models in found
                if common_of(params) != workspace or not seeds & trained_on(models)}
    kept = [m.on(seeds) for m in trained_models(found) if m.common == workspace]
    return [m for m in kept if m], len(left_out)


def as_read(params: dict) -> dict:
    """Flattened params as the stages read them: data.mix_alpha only with a data.mix
    (DataConfig.mixing), so experiments that differ in the alpha of no mixing are one setting."""
    if params.get("data.mix", "none") == "none":
        return {k: v for k, v in params.items() if k != "data.mix_alpha"}
    return params


def normal(params: dict) -> dict:
    """Numbers as floats: `-S distill.kd.temperature=4` and a committed 4.0 are one setting."""
    return {k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
            for k, v in params.items()}
