"""The honest sweep report: choose on validation, adjust for the settings tried, test once.

    python -m kdpipe.analysis.sweep [--all-commits] [--out reports/sweep] [--no-mlflow]

Collects every DVC experiment (`dvc exp show --json`: each one's params; its
metrics/models.json, which holds every model's per-seed validation and test accuracy, read from
DVC's cache at the experiment's commit) and
groups the trained models by the params they read: a baseline student by its recipe (the
`student` section), a distilled student by its recipe and its method's section. Duplicates (a
model restored from DVC's cache in several experiments) count once. The baselines are the
plain students and the controls (label smoothing is a student recipe; teacher-free KD and a
method on the shuffled teacher are controls: records marked `control`). Then, on validation
only:

- each setting's paired gain per seed over the plain baseline trained with the same recipe
  (what the loss term adds) and over the best baseline (the best of every recipe and control
  tried, chosen on validation: what you gain over training the student well), with 95% CI and
  paired t-test p, Holm-adjusted for the number of settings tried;
- the best setting (highest mean validation accuracy).

Only then that one setting's test gains, both ways. A gain whose adjusted p is not below 0.05
is called noise, however large. Writes <out>.md, <out>.png and <out>.json, and an MLflow run.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from kdpipe.analysis import schedule
from kdpipe.analysis.sweep_report import figure, markdown
from kdpipe.core.config import flat
from kdpipe.core.files import write_json, write_text
from kdpipe.measure.fidelity import FIDELITY_KEYS
from kdpipe.measure.stats import holm, paired_by_seed

# must match across a sweep
COMMON = ("seed", "device", "precision", "threads", "data.", "teacher.")
# ... but for the students' own inputs: which views they see and how they are mixed are part of
# a recipe, compared like the `student` section (the teacher trains on its own teacher.views)
STUDENT_DATA = ("data.views", "data.mix", "data.mix_alpha")


def is_common(key: str) -> bool:
    """Whether params `key` must be the same for two settings to compare (data, teacher,
    seeds, device), rather than be part of a recipe."""
    return key.startswith(COMMON) and key not in STUDENT_DATA


def in_recipe(key: str) -> bool:
    """Whether params `key` is part of a student's training recipe."""
    return key.startswith("student.") or key in STUDENT_DATA
MODELS_FILE = "metrics/models.json"  # every model's per-seed val and test accuracy


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

    @property
    def is_baseline(self) -> bool:
        return self.model == "student" or self.control

    @property
    def recipe(self) -> dict:
        return {k: v for k, v in self.setting.items() if in_recipe(k)}

    def mean_val(self) -> float:
        return sum(self.val.values()) / len(self.val)


def reads(model: str, key: str) -> bool:
    """Whether `model`'s training stage reads params `key` (besides the common ones)."""
    own = model != "student" and key.startswith(f"distill.{model}.")
    return in_recipe(key) or own


def models_at(rev: str) -> dict | None:
    """metrics/models.json as experiment (or commit) `rev` left it, from DVC's cache; None
    where it has none."""
    from dvc.api import read
    from dvc.exceptions import DvcException

    try:
        text = Path(MODELS_FILE).read_text() if rev == "workspace" else read(MODELS_FILE,
                                                                              rev=rev)
    except (FileNotFoundError, DvcException):
        return None
    return json.loads(text)


def workspace_is_stale() -> bool:
    """Whether params or files changed since the workspace's outputs were made (an edited
    params.yaml, a run stopped midway): its metrics would be credited to params that did not
    produce them."""
    done = subprocess.run(["dvc", "status", "--json"], capture_output=True, text=True)
    return done.returncode != 0 or json.loads(done.stdout or "{}") != {}


def experiments(all_commits: bool, unfinished: list[str] | None = None
                ) -> list[tuple[str, dict, dict]]:
    """(name, flattened params, metrics/models.json) of every finished experiment DVC knows;
    the names of those still queued or running are appended to `unfinished`."""
    unfinished = [] if unfinished is None else unfinished
    cmd = ["dvc", "exp", "show", "--json", *(["--all-commits"] if all_commits else [])]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: `{' '.join(cmd)}` failed: {done.stderr.strip()[-500:]}")
    found = []

    def visit(entry: dict) -> None:
        rev = entry["rev"]  # a commit's sha, or "workspace"
        name = entry.get("name") or (rev if rev == "workspace" else rev[:7])
        if entry.get("error"):  # a failed run keeps the metrics of the files it started from
            print(f"left out experiment {name}: {entry['error'].get('msg') or 'failed'}",
                  file=sys.stderr)
            return
        if rev == "workspace" and workspace_is_stale():
            print("left out the workspace: it changed since its outputs were made (`dvc status`);"
                  " `dvc repro` or `dvc exp apply <name>` makes it count", file=sys.stderr)
            return
        data = entry.get("data") or {}
        params = ((data.get("params") or {}).get("params.yaml") or {}).get("data")
        models = models_at(rev) if params else None
        if params and models:
            found.append((name, flat(params), models))
        for group in entry.get("experiments") or []:
            state = (group.get("executor") or {}).get("state")
            if state in ("queued", "running"):  # its files are still those it started from
                print(f"left out experiment {group.get('name')}: {state}, not finished",
                      file=sys.stderr)
                unfinished.append(group.get("name"))
                continue
            for child in group.get("revs", []):
                visit(child)

    for entry in json.loads(done.stdout):
        visit(entry)
    return found


def trained_models(found: list[tuple[str, dict, dict]]) -> list[Setting]:
    unique: dict[str, Setting] = {}
    for name, params, models in found:
        params = as_read(params)
        common = {k: v for k, v in params.items() if is_common(k)}
        for model, row in models.items():
            if model == "teacher" or "val_acc_per_seed" not in row:
                continue
            setting = {k: v for k, v in params.items() if reads(model, k)}
            key = json.dumps([model, normal(setting), normal(common)], sort_keys=True,
                             default=str)
            fidelity = {k: row[k] for k in FIDELITY_KEYS if k in row}
            unique.setdefault(key, Setting(model, setting, common, row["val_acc_per_seed"],
                                           row["test_acc_per_seed"], name, fidelity,
                                           row.get("control", False)))
    return list(unique.values())


def comparable(found: list[tuple[str, dict, dict]]) -> tuple[list[Setting], int]:
    """The settings trained on the first experiment's (the workspace's) data, teacher, seeds
    and device, and how many experiments were left out for differing there: scores on other
    data or from another teacher do not compare."""
    def common(params: dict) -> dict:
        return {k: v for k, v in params.items() if is_common(k)}

    workspace = common(found[0][1])
    left_out = len({name for name, params, _ in found if common(params) != workspace})
    return [m for m in trained_models(found) if m.common == workspace], left_out


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


def analyse(models: list[Setting]) -> dict:
    baselines = [m for m in models if m.is_baseline]
    if not any(m.model == "student" for m in baselines):
        sys.exit("error: no baseline student in the experiments; run the pipeline first")
    best_baseline = max(baselines, key=Setting.mean_val)
    rows = []
    for m in models:
        if m.is_baseline:
            continue
        same = next((b for b in baselines if b.model == "student" and b.recipe == m.recipe),
                    None)
        rows.append({"trained": m, "same_recipe": same,
                     "val_vs_same": paired_by_seed(m.val, same.val) if same else None,
                     "val_vs_best": paired_by_seed(m.val, best_baseline.val)})
    for family in ("val_vs_same", "val_vs_best"):
        adjusted = holm([r[family]["p_value"] if r[family] else None for r in rows])
        for row, p in zip(rows, adjusted):
            if row[family]:
                row[family]["p_holm"] = p
    chosen = max(rows, key=lambda r: r["trained"].mean_val()) if rows else None
    test = None
    if chosen:
        same = chosen["same_recipe"]
        test = {"vs_same": paired_by_seed(chosen["trained"].test, same.test) if same else None,
                "vs_best": paired_by_seed(chosen["trained"].test, best_baseline.test)}
    return {"rows": sorted(rows, key=lambda r: -r["trained"].mean_val()),
            "best_baseline": best_baseline, "baselines": baselines, "chosen": chosen,
            "test": test, "seeds": sorted({int(s) for m in models for s in m.val})}


def differing_keys(models: list[Setting]) -> list[str]:
    """The params the sweep varied: keys with more than one value among the settings that
    have them."""
    keys = sorted({k for m in models for k in m.setting})
    return [k for k in keys
            if len({json.dumps(normal(m.setting)[k]) for m in models if k in m.setting}) > 1]


def summary(result: dict, keys: list[str]) -> dict:
    def row(r):
        return {"model": r["trained"].model, "setting": r["trained"].setting,
                "experiment": r["trained"].experiment, "val_acc": r["trained"].mean_val(),
                "fidelity": r["trained"].fidelity,
                "val_vs_same": r["val_vs_same"], "val_vs_best": r["val_vs_best"]}

    chosen, best = result["chosen"], result["best_baseline"]
    return {"differing_params": keys, "seeds": result["seeds"], "common": best.common,
            "best_baseline": best.setting, "best_baseline_model": best.model,
            "best_baseline_val_acc": best.mean_val(),
            "rows": [row(r) for r in result["rows"]],
            "chosen": row(chosen) if chosen else None, "chosen_test": result["test"]}


def chosen_test_metrics(name: str, gain: dict) -> dict:
    """The chosen setting's test gain as MLflow metrics; its p only where there is one (one
    seed: no test), and a p of 0 stays 0."""
    p = gain["p_value"]
    return {f"summary/chosen_test_gain_{name}": gain["mean"],
            **({f"summary/chosen_test_p_{name}": p} if p is not None else {})}


def log_to_mlflow(files: list[Path], data: dict) -> None:
    from kdpipe.core.config import load_config
    from kdpipe.tracking.stage_record import recorded_stage

    with recorded_stage(load_config().mlflow.experiment, "sweep", {}):
        import mlflow

        for path in files:
            mlflow.log_artifact(str(path))
        test = data["chosen_test"] or {}
        for name, gain in test.items():
            if gain:
                mlflow.log_metrics(chosen_test_metrics(name, gain))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--all-commits", action="store_true",
                        help="experiments of every commit, not only the workspace's baseline")
    parser.add_argument("--out", type=Path, default=Path("reports/sweep"))
    parser.add_argument("--no-mlflow", action="store_true", help="do not record an MLflow run")
    args = parser.parse_args(argv)
    found = experiments(args.all_commits)
    if not found:
        sys.exit("error: no experiment with metrics/models.json; run `dvc exp run` first")
    models, left_out = comparable(found)
    keys = differing_keys(models)
    result = analyse(models)
    files = [args.out.with_suffix(".md"), args.out.with_suffix(".png"),
             args.out.with_suffix(".json")]
    text = markdown(result, keys, left_out)
    figure(result, keys, files[1])
    schedules = schedule.by_schedule(models)
    if schedules:
        text += "\n".join(schedule.markdown(schedules)) + "\n"
        files.append(args.out.with_name(args.out.name + "-schedule.png"))
        schedule.figure(schedules, files[-1])
    write_text(files[0], text)
    data = summary(result, keys)
    write_json(files[2], data)
    if not args.no_mlflow:
        log_to_mlflow(files, data)
    print(text)
    print("written: " + ", ".join(map(str, files)))


if __name__ == "__main__":
    main()
