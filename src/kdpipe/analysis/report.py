"""The comparison of every trained model over seeds: aggregated metrics per model, paired gains
of each method over the baseline student, and a markdown report."""
from __future__ import annotations

import statistics

import numpy as np
import torch

from kdpipe.core.files import read_json
from kdpipe.core.machine import BUSY
from kdpipe.core.markdown import p_cell, p_is, plus_minus, table
from kdpipe.core.paths import FIGURES, prediction_file, seed_metrics_file
from kdpipe.measure.fidelity import FIDELITY_KEYS, to_teacher
from kdpipe.measure.stats import holm, paired_gain, summarize, verdict

COST_KEYS = ("num_params", "size_mb", "inference_ms_batch1", "inference_images_per_second",
             "train_seconds", "train_images_per_second", "wall_seconds", "peak_rss_mb")
BF16_KEYS = ("inference_ms_batch1_bf16", "inference_images_per_second_bf16")  # native bf16 only


def read_runs(teacher_seed: int, seeds: list[int], methods: list[str]) -> dict[str, list[dict]]:
    """Every model's per-seed records (metrics/seeds/<name>-<seed>.json), in seed order:
    teacher, baseline student, then each method that ran; each student's with its agreement
    with and KL from the teacher on test (from predictions/<name>-<seed>.npy)."""
    runs = {"teacher": [read_json(seed_metrics_file("teacher", teacher_seed))]}
    teacher_logits = load_logits("teacher", teacher_seed)
    for name in ("student", *methods):
        runs[name] = [read_json(seed_metrics_file(name, s))
                      | to_teacher(load_logits(name, s), teacher_logits) for s in seeds]
    return runs


def load_logits(name: str, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.load(prediction_file(name, seed)))


def aggregate(runs: list[dict]) -> dict:
    """One model's metrics over its seeds: accuracies as mean, std, CI and per-seed values;
    costs as means."""
    out: dict = {"seeds": [r["seed"] for r in runs],
                 "description": runs[0].get("description", ""),  # what the training stage ran
                 "control": runs[0].get("control", False)}  # a baseline recipe (the sweep's)
    for key in ("test_acc", "val_acc", *FIDELITY_KEYS):
        if key in runs[0]:
            values = [r[key] for r in runs]
            summary = summarize(values)
            out |= {key: round(summary["mean"], 3), f"{key}_std": round(summary["std"], 3),
                    f"{key}_ci95": None if summary["ci95"] is None else round(summary["ci95"], 3),
                    f"{key}_per_seed": {str(r["seed"]): r[key] for r in runs}}
    out["precision"] = ", ".join(sorted({r.get("precision", "fp32") for r in runs}))
    for key in COST_KEYS + tuple(k for k in BF16_KEYS if all(k in r for r in runs)):
        out[key] = round(statistics.fmean(r[key] for r in runs), 3)
    # the busiest its seeds' stages found the machine: one slowed seed slows the mean
    out["other_load_per_core"] = max(r.get("other_load_per_core", 0.0) for r in runs)
    return out


def collect(runs: dict[str, list[dict]]) -> dict:
    """Every model's aggregated metrics, each method's paired gain over the baseline, the
    metric used to choose (val_acc when there is a validation split) and the best student:
    the method with the best mean, and its seed with the best score (the model registered)."""
    models = {name: aggregate(model_runs) for name, model_runs in runs.items()}
    methods = [name for name in runs if name not in ("teacher", "student")]
    choose_by = "val_acc" if "val_acc" in models["student"] else "test_acc"
    teacher_speed = models["teacher"]["inference_images_per_second"]
    for row in models.values():
        row["delta_vs_student"] = round(row["test_acc"] - models["student"]["test_acc"], 3)
        row["speedup_vs_teacher"] = round(row["inference_images_per_second"] / teacher_speed, 2)
    raw = {m: paired_gain([r["test_acc"] for r in runs[m]],
                          [r["test_acc"] for r in runs["student"]]) for m in methods}
    # Every method is tested against the same baseline at once: the verdicts use Holm-adjusted
    # p-values, so more methods do not mean more chances of a gain that is only noise.
    adjusted = holm([gain["p_value"] for gain in raw.values()])
    gains = {}
    for (method, gain), p_holm in zip(raw.items(), adjusted):
        gain["p_holm"] = p_holm
        gains[method] = {**{k: v if v is None or k == "diffs" else round(v, 4)
                            for k, v in gain.items()}, "verdict": verdict(gain, "p_holm")}
    best = max(["student", *methods], key=lambda name: models[name][choose_by])
    best_run = max(runs[best], key=lambda r: r[choose_by])
    return {"models": models, "gains": gains, "choose_by": choose_by, "best_student": best,
            "best_seed": best_run["seed"], "best_run": best_run}


def markdown(comparison: dict) -> str:
    models, gains = comparison["models"], comparison["gains"]
    seeds, teacher_seed = models["student"]["seeds"], models["teacher"]["seeds"][0]
    lines = ["# Knowledge distillation: comparison", "",
             f"Students: {len(seeds)} seed(s) {seeds}; teacher: seed {teacher_seed}. Accuracy: "
             "mean ± 95% CI half-width (t-distribution) over seeds, test split.", ""]
    rows = []
    for name, row in models.items():
        gain = gains.get(name)
        gain_cells = ([plus_minus(gain["mean"], gain["ci95"], "+"), p_cell(gain["p_value"]),
                       p_cell(gain["p_holm"]), gain["verdict"]] if gain else ["", "", "", ""])
        rows.append([
            f"**{name}**: {row['description']}", f"{row['num_params']:,.0f}",
            plus_minus(row["test_acc"], row["test_acc_ci95"]),
            *gain_cells, f"{row['size_mb']:.2f}", f"{row['inference_ms_batch1']:.2f}",
            f"{row['inference_images_per_second']:,.0f}", f"{row['speedup_vs_teacher']:.1f}×",
            f"{row['train_seconds']:.1f}", f"{row['wall_seconds']:.1f}"])
    lines += table(["model", "params", "test acc %", "gain vs student (pp)", "p", "p (Holm)",
                    "verdict", "size MB", "latency ms (batch 1)", "img/s (batch 256)",
                    "speed-up vs teacher", "train s", "stage wall s"], rows, "lrrrrrlrrrrrr")
    lines += load_lines(models) + fidelity_lines(models) + bf16_lines(models)
    best, choose_by = comparison["best_student"], comparison["choose_by"]
    lines += ["", f"Chosen by mean `{choose_by}`: **{best}**; its seed {comparison['best_seed']}"
              f" (best `{choose_by}` of the method) is registered as `kd-student`.", ""]
    if choose_by == "test_acc":
        lines += ["**Chosen on the test set**: there is no validation split "
                  "(`data.val_fraction: 0`, the tutorial's setup), so the choice above used the "
                  "test accuracy it reports, which makes that accuracy optimistic. Set "
                  "`data.val_fraction` > 0 to choose on validation and measure test once.", ""]
    for method, gain in gains.items():
        lines.append(f"- **{method}**: {gain['verdict']}, {gain['mean']:+.2f} pp"
                     + (f" (95% CI ± {gain['ci95']:.2f}, paired t-test "
                        f"{p_is(gain['p_value'])}, Holm-adjusted over {len(gains)} method(s) "
                        f"{p_is(gain['p_holm'])})" if gain["p_value"] is not None else ""))
    lines += ["", "Gain: per-seed difference from the baseline student trained with the same "
              "seed (same initial weights and batch order); the verdict uses p (Holm), the "
              "paired t-test's p adjusted for the number of methods compared. Inference: "
              "medians of timed forward passes after warm-up, on the device each stage ran on, "
              "in fp32 (and bf16 where the device computes it natively); speed-up = batch-256 "
              "throughput over the teacher's. Train s excludes evaluation; stage wall s "
              "includes process start, imports, evaluation and MLflow logging.", ""]
    lines += [f"![{name}]({path.name})" for name, path in FIGURES.items()]
    return "\n".join(lines) + "\n"


def load_lines(models: dict) -> list[str]:
    """Which models' timings were taken while other work loaded the machine."""
    busy = {name: row["other_load_per_core"] for name, row in models.items()
            if row["other_load_per_core"] > BUSY}
    if not busy:
        return []
    named = ", ".join(f"{name} ({load:.2f})" for name, load in busy.items())
    return ["", f"**Timings taken under load**: while these models trained, other work kept the "
            f"machine busy (load beyond the stage's own threads, per core, > {BUSY}): {named}. "
            "Their latency, throughput and wall times are slower than the machine's; rerun "
            "them on an idle machine to compare costs."]


def fidelity_lines(models: dict) -> list[str]:
    """Fidelity on test (kdpipe.measure.fidelity), mean ± 95% CI over seeds."""
    rows = [[name, *(plus_minus(row[k], row[f"{k}_ci95"]) if k in row else "–"
                     for k in FIDELITY_KEYS)] for name, row in models.items()]
    return ["", "Fidelity on test: top-1 agreement with the teacher, KL(teacher ‖ model) at "
            "T = 1, expected calibration error (15 bins).", "",
            *table(["model", "agreement %", "KL (nats)", "ECE %"], rows, "lrrr")]


def bf16_lines(models: dict) -> list[str]:
    """What each model trained in, and what bf16 buys at inference where it was measured."""
    trained = ", ".join(f"{name} {row['precision']}" for name, row in models.items())
    lines = ["", f"Trained and evaluated in: {trained}."]
    for name, row in models.items():
        if "inference_images_per_second_bf16" in row:
            ratio = row["inference_images_per_second_bf16"] / row["inference_images_per_second"]
            lines.append(f"- {name} in bf16: {row['inference_ms_batch1_bf16']:.2f} ms at batch "
                         f"1, {row['inference_images_per_second_bf16']:,.0f} img/s at batch 256 "
                         f"({ratio:.2f}x fp32)")
    return lines


def summary_metrics(comparison: dict) -> dict:
    """What `dvc exp show` shows per experiment, narrow enough to answer at a glance on a
    200-column terminal: the chosen student; the teacher's test accuracy; the baseline
    student's val and test accuracy; each method's val accuracy and test gain over the baseline
    (its test accuracy is the baseline's plus the gain), in %, 2 decimals. In this order, not
    sorted: DVC keeps a metrics file's order, and columns that do not fit collapse from the
    right. Everything else (CIs, p, per-seed values, costs, fidelity) is in
    metrics/models.json and the report."""
    models, gains = comparison["models"], comparison["gains"]
    out: dict = {"best": comparison["best_student"],
                 "teacher": {"test": round(models["teacher"]["test_acc"], 2)},
                 "student": {k: round(models["student"][f"{k}_acc"], 2)
                             for k in ("val", "test") if f"{k}_acc" in models["student"]}}
    for method, gain in gains.items():
        row = models[method]
        out[method] = {**({"val": round(row["val_acc"], 2)} if "val_acc" in row else {}),
                       "gain": round(gain["mean"], 2)}
    return out
