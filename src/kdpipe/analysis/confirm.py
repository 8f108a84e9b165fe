"""Confirm the sweep's choice on fresh seeds: one pre-registered comparison, tested once.

    kdpipe confirm [--seeds 47-51 | --count 5] [--sweep reports/sweep.json] [--queue | --report]
                   [--dry-run] [--out reports/confirm]

Reads what `kdpipe sweep` chose on validation (reports/sweep.json): the chosen setting and the
best baseline (the best plain recipe or control). Trains both again on seeds the selection
never saw (default: the five after the sweep's; seeds it saw are refused), as DVC experiments
(`dvc exp run --temp`: cached, resumable from DVC's run-cache, recorded in MLflow like every
run; `--queue` queues them for `dvc queue start`, then `--report`). The chosen setting's test
accuracy is paired per fresh seed with the best baseline's: its gain, 95% CI and p are the
confirmation, reported beside the selection's figures, with the fraction of the gap from the
best baseline to the teacher that the chosen student closes. Writes <out>.md, <out>.json and an
MLflow run `confirm`.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from statistics import fmean

import yaml

from kdpipe.analysis.settings import common_of, normal
from kdpipe.analysis.sweep import experiments
from kdpipe.analysis.sweep_report import seed_range
from kdpipe.core.config import flat
from kdpipe.core.errors import ConfigError
from kdpipe.core.files import read_json, write_json, write_text
from kdpipe.core.markdown import p_cell, plus_minus, table
from kdpipe.measure.stats import paired_by_seed, verdict

LOCK = Path(".dvc/tmp/kdpipe-confirm.lock")  # held while confirm starts or runs its arms


def fresh_seeds(spec: str | None, count: int, seen: list[int]) -> list[int]:
    """`spec` ("47-51" or "47,48,49") or the `count` seeds after the largest one seen; refused
    where they overlap the seen ones."""
    if spec is None:
        return list(range(max(seen) + 1, max(seen) + 1 + count))
    try:
        first, _, last = spec.partition("-")
        seeds = list(range(int(first), int(last) + 1)) if last else \
            sorted({int(s) for s in spec.split(",")})
    except ValueError:
        raise ConfigError(f"--seeds {spec!r}: expected a range such as 47-51 or a list "
                          "such as 47,48,49") from None
    overlap = sorted(set(seeds) & set(seen))
    if overlap:
        raise ConfigError(f"--seeds {spec}: {', '.join(map(str, overlap))} were seen by the "
                          f"selection (seeds {seed_range(seen)}); a confirmation needs seeds it "
                          "never saw")
    if len(seeds) < 2:
        raise ConfigError(f"--seeds {spec}: a paired test needs at least 2 seeds")
    return seeds


def check_workspace(common: dict, params: Path = Path("params.yaml")) -> None:
    """The data, teacher and device the sweep compared on must be the workspace's, or the fresh
    students would answer another question."""
    here = common_of(flat(yaml.safe_load(params.read_text())))
    # an older sweep.json holds `seeds` among its common params
    wanted = {k: v for k, v in common.items() if k != "seeds"}
    differ = sorted(k for k in here.keys() | wanted.keys()
                    if normal({k: here.get(k)}) != normal({k: wanted.get(k)}))
    if differ:
        k = differ[0]
        raise ConfigError(f"params.yaml {k}={here.get(k)!r}, but the sweep compared settings at "
                          f"{k}={wanted.get(k)!r} ({len(differ)} such key(s)); restore it")


def arms(sweep: dict) -> dict[str, tuple[str, dict]]:
    """{arm: (model, the params it read)} for the chosen setting and the best baseline."""
    if not sweep.get("chosen"):
        raise ConfigError("the sweep chose no setting (no distilled student); nothing to confirm")
    return {"chosen": (sweep["chosen"]["model"], sweep["chosen"]["setting"]),
            "baseline": (sweep["best_baseline_model"], sweep["best_baseline"])}


def arm_names(sweep: dict) -> tuple[str, str]:
    """What the report calls the chosen arm and the baseline arm: their models, and where both
    are the same model (a method against its own control), the params that tell them apart."""
    (chosen, chosen_setting), (base, base_setting) = arms(sweep).values()
    if chosen != base:
        return chosen, base
    differ = sorted(k for k in chosen_setting.keys() | base_setting.keys()
                    if chosen_setting.get(k) != base_setting.get(k))

    def name(model: str, setting: dict) -> str:
        return f"{model} ({', '.join(f'{k}={setting.get(k)}' for k in differ)})"
    return name(chosen, chosen_setting), name(base, base_setting)


def plan(sweep: dict, seeds: list[int]) -> dict[str, list[str]]:
    """{experiment name: its `-S` overrides}: one experiment per arm (a baseline arm of plain
    students also trains the chosen method, as `distill.methods` may not be empty)."""
    chosen_model, chosen_setting = arms(sweep)["chosen"]
    out = {}
    for arm, (model, setting) in arms(sweep).items():
        sets = {**chosen_setting, **setting} if model == "student" else dict(setting)
        sets |= {"seeds": seeds, "distill.methods": [chosen_model if model == "student" else model]}
        overrides = [f"{k}={v if isinstance(v, str) else json.dumps(v)}"
                     for k, v in sorted(sets.items())]
        # The settings' digest in the name: another sweep's choice is another experiment.
        digest = hashlib.sha256("\n".join(overrides).encode()).hexdigest()[:6]
        out[f"confirm-{arm}-{model}-{seed_range(seeds).replace(', ', '_')}-{digest}"] = overrides
    return out


@contextlib.contextmanager
def one_confirm_at_a_time(path: Path = LOCK) -> Iterator[None]:
    """An exclusive lock while confirm starts or runs its arms (released however the process
    ends): a second `kdpipe confirm` in the repository fails at once instead of training the
    same arms beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            sys.exit("error: another `kdpipe confirm` is running in this repository; wait for "
                     "it to finish")
        yield


def stopped(executor: dict) -> bool:
    """Whether an arm DVC lists as running was in fact stopped: confirm runs its arms in temp
    dirs, in the foreground, and a run killed midway stays "running" in `dvc exp show` for
    good. Sound only while this process holds the confirm lock (no other confirm runs one)."""
    return executor.get("state") == "running" and executor.get("name") == "tempdir"


def run(experiments_plan: dict[str, list[str]], queue: bool, dry_run: bool) -> None:
    with one_confirm_at_a_time():
        unfinished: dict[str, dict] = {}
        done = {name for name, _, _ in experiments(all_commits=False, unfinished=unfinished)}
        for name, sets in experiments_plan.items():
            if name in done:
                print(f"{name}: done already")
            else:
                start(name, sets, unfinished.get(name), queue, dry_run)


def start(name: str, sets: list[str], unfinished: dict | None, queue: bool,
          dry_run: bool) -> None:
    """Run (or queue) one arm; `unfinished`: DVC's executor where it lists the arm unfinished.
    An arm queued, or running in a queue worker, is refused: the queue will finish it."""
    if unfinished and not stopped(unfinished):
        sys.exit(f"error: experiment {name} is queued or running; once `dvc queue status` "
                 "shows it done, run `kdpipe confirm --report`")
    if unfinished:
        print(f"{name}: its last run stopped before it finished; running it again (finished "
              "stages come from DVC's run-cache)", file=sys.stderr)
    cmd = ["dvc", "exp", "run", "--queue" if queue else "--temp", "-n", name,
           *[arg for s in sets for arg in ("-S", s)]]
    print(" ".join(cmd), flush=True)
    if not dry_run and subprocess.run(cmd).returncode != 0:
        sys.exit(f"error: experiment {name} failed; rerun `kdpipe confirm` to resume it")


def collect(sweep: dict, names: list[str], seeds: list[int]) -> dict:
    """The test accuracy per fresh seed of each arm, from its experiment, and the paired gain."""
    found = {name: models for name, _, models in experiments(all_commits=False)}
    tests = {}
    for (arm, (model, _)), name in zip(arms(sweep).items(), names):
        if name not in found:
            raise ConfigError(f"experiment {name} has not finished; run `kdpipe confirm` (or "
                              "`dvc queue start`) first")
        per_seed = found[name][model]["test_acc_per_seed"]
        if sorted(map(int, per_seed)) != seeds:
            raise ConfigError(f"experiment {name} holds seeds {sorted(per_seed)}, not {seeds}")
        tests[arm] = per_seed
    teacher = found[names[0]]["teacher"]["test_acc"]
    return {"seeds": seeds, "test": tests, "teacher_test": teacher,
            "gap_closed": gap_closed(teacher, fmean(tests["chosen"].values()),
                                     fmean(tests["baseline"].values())),
            "gain": paired_by_seed(tests["chosen"], tests["baseline"])}


def gap_closed(teacher: float, chosen: float, baseline: float) -> float | None:
    """How much of the baseline's distance to the teacher the chosen student makes up
    ((chosen - baseline) / (teacher - baseline), test accuracies): 1 is the teacher's accuracy.
    None where the baseline is already as good as the teacher (no gap to close)."""
    return (chosen - baseline) / (teacher - baseline) if teacher > baseline else None


def gain_cell(gain: dict) -> str:
    return plus_minus(gain["mean"], gain["ci95"], "+")


def markdown(sweep: dict, result: dict) -> str:
    chosen, base = arm_names(sweep)
    g, selection = result["gain"], sweep["chosen"]["val_vs_best"]
    p = p_cell(g["p_value"], 4)
    selection_test = (sweep.get("chosen_test") or {}).get("vs_best") or {}
    lines = ["# Confirmation on fresh seeds", "",
             f"Selected on validation (seeds {seed_range(sweep['seeds'])}), confirmed on fresh "
             f"seeds ({seed_range(result['seeds'])}): **{chosen}** against the best baseline, "
             f"**{base}**, each trained again on seeds the selection never saw; test measured "
             "once. Gains paired per seed, accuracy points, mean ± 95% CI; one pre-registered "
             "test, so p is not adjusted.", ""]
    means = {arm: fmean(per_seed.values()) for arm, per_seed in result["test"].items()}
    rows = [["selection: val gain over the best baseline", gain_cell(selection),
             f"{p_cell(selection.get('p_holm'), 4)} (Holm, over the settings tried)",
             verdict(selection, "p_holm")]]
    if selection_test:
        rows.append(["selection: test gain, same seeds", gain_cell(selection_test),
                     f"{p_cell(selection_test['p_value'], 4)} (selection's seeds)",
                     verdict(selection_test, "p_value")])
    rows.append([f"**confirmation: test gain, fresh seeds** ({chosen} {means['chosen']:.2f}% "
                 f"vs {base} {means['baseline']:.2f}%)", f"**{gain_cell(g)}**", p,
                 f"**{verdict(g, 'p_value')}**"])
    lines += table(["figure", "gain (pp)", "p", "verdict"], rows, "lrll")
    test = {arm: [v[str(s)] for s in result["seeds"]] for arm, v in result["test"].items()}
    per_seed = [[str(s), f"{a:.2f}", f"{b:.2f}", f"{a - b:+.2f}"]
                for s, a, b in zip(result["seeds"], test["chosen"], test["baseline"])]
    lines += ["", *table(["seed", f"{chosen} test %", f"{base} test %", "gain"], per_seed,
                         "rrrr")]
    closed, teacher = result["gap_closed"], f"The teacher: {result['teacher_test']:.2f}% on test"
    lines += ["", f"{teacher}, no better than the best baseline: no gap to close."
              if closed is None else
              f"{teacher}. The chosen student closes **{closed:.0%}** of the gap from the best "
              "baseline to the teacher ((chosen - baseline) / (teacher - baseline), test means "
              "on the fresh seeds)."]
    return "\n".join(lines) + "\n"


def log_to_mlflow(files: list[Path], result: dict) -> None:
    import mlflow

    from kdpipe.core.config import load_config
    from kdpipe.tracking.stage_record import recorded_stage

    with recorded_stage(load_config().mlflow.experiment, "confirm", {}):
        for path in files:
            mlflow.log_artifact(str(path))
        gain, closed = result["gain"], result["gap_closed"]
        mlflow.log_metrics({"summary/confirm_gain": gain["mean"],
                            **({"summary/confirm_p": gain["p_value"]}
                               if gain["p_value"] is not None else {}),
                            **({"summary/confirm_gap_closed": closed}
                               if closed is not None else {})})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", help="fresh seeds, e.g. 47-51 (default: after the sweep's)")
    parser.add_argument("--count", type=int, default=5, help="how many fresh seeds (default 5)")
    parser.add_argument("--sweep", type=Path, default=Path("reports/sweep.json"))
    parser.add_argument("--out", type=Path, default=Path("reports/confirm"))
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--queue", action="store_true", help="queue the experiments only")
    mode.add_argument("--report", action="store_true", help="report queued experiments' results")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--no-mlflow", action="store_true", help="do not record an MLflow run")
    args = parser.parse_args(argv)
    try:
        sweep = read_json(args.sweep) if args.sweep.exists() else None
        if sweep is None:
            raise ConfigError(f"{args.sweep}: not found; run `kdpipe sweep` first")
        seeds = fresh_seeds(args.seeds, args.count, sweep["seeds"])
        check_workspace(sweep["common"])
        todo = plan(sweep, seeds)
        if not args.report:
            run(todo, args.queue, args.dry_run)
        if args.queue or args.dry_run:
            print("then: `dvc queue start` and, once done, `kdpipe confirm --report`"
                  if args.queue else "")
            return
        result = collect(sweep, list(todo), seeds)
    except ConfigError as err:
        sys.exit(f"error: {err}")
    files = [args.out.with_suffix(".md"), args.out.with_suffix(".json")]
    text = markdown(sweep, result)
    write_text(files[0], text)
    write_json(files[1], {**result, "experiments": list(todo),
                          "arms": {arm: m for arm, (m, _) in arms(sweep).items()}})
    if not args.no_mlflow:
        log_to_mlflow(files, result)
    print(text)
    print("written: " + ", ".join(map(str, files)))
