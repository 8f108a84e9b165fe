"""The honest sweep report: choose on validation, adjust for the settings tried, test once.

    python -m kdpipe.analysis.sweep [--all-commits] [--out reports/sweep] [--no-mlflow]

Collects every DVC experiment (`dvc exp show --json`: each one's params; its
metrics/models.json, which holds every model's per-seed validation and test accuracy, read from
DVC's cache at the experiment's commit) and groups the trained models by the params they read
(kdpipe.analysis.settings): a baseline student by its recipe (the `student` section), a
distilled student by its recipe and its method's section. Duplicates (a model restored from
DVC's cache in several experiments) count once; one setting trained on other seeds in another
experiment adds them. Scores are those on the workspace's `seeds`; a setting trained on only
some of them is shown and tested over those, but not ranked (means over other seeds do not
compare). The baselines are the plain students and the controls (label smoothing is a student
recipe; teacher-free KD and a method on the shuffled teacher are controls: records marked
`control`). Then, on validation only:

- each setting's paired gain per seed over the plain baseline trained with the same recipe
  (what the loss term adds) and over the best baseline (the best of every recipe and control
  tried, chosen on validation: what you gain over training the student well), with 95% CI and
  paired t-test p, Holm-adjusted for the number of settings tried;
- the best setting (highest mean validation accuracy of those trained on every seed).

Only then that one setting's test gains, both ways. A gain whose adjusted p is not below 0.05
is called noise, however large. Writes <out>.md, <out>.png and <out>.json, and an MLflow run.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from kdpipe.analysis import schedule
from kdpipe.analysis.settings import Setting, comparable, normal
from kdpipe.analysis.sweep_report import figure, markdown
from kdpipe.core.config import flat
from kdpipe.core.files import write_json, write_text
from kdpipe.measure.stats import holm, paired_by_seed

MODELS_FILE = "metrics/models.json"  # every model's per-seed val and test accuracy


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


def experiments(all_commits: bool, unfinished: dict[str, dict] | None = None
                ) -> list[tuple[str, dict, dict]]:
    """(name, flattened params, metrics/models.json) of every finished experiment DVC knows;
    those still queued or running go into `unfinished`, name -> DVC's executor ({"state":
    "queued" | "running", "name": where it runs: "tempdir", "dvc-task" (a queue worker), ...})."""
    unfinished = {} if unfinished is None else unfinished
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
            executor = group.get("executor") or {}
            if executor.get("state") in ("queued", "running"):  # files it started from
                print(f"left out experiment {group.get('name')}: {executor['state']}, not "
                      "finished", file=sys.stderr)
                unfinished[group.get("name")] = executor
                continue
            for child in group.get("revs", []):
                visit(child)

    for entry in json.loads(done.stdout):
        visit(entry)
    return found


def analyse(models: list[Setting]) -> dict:
    baselines = [m for m in models if m.is_baseline]
    if not any(m.model == "student" and m.complete for m in baselines):
        sys.exit("error: no baseline student trained on every seed of the workspace's `seeds` "
                 "in the experiments; run the pipeline first")
    # Only settings trained on every seed are ranked: means over other seeds do not compare.
    best_baseline = max((b for b in baselines if b.complete), key=Setting.mean_val)
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
    complete = [r for r in rows if r["trained"].complete]
    chosen = max(complete, key=lambda r: r["trained"].mean_val()) if complete else None
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
