"""Where stages read and write, relative to the workspace DVC runs them in."""
import os
from pathlib import Path

PREPARED_DIR = Path("data/prepared")
TARGETS_DIR = Path("data/teacher_targets")
MODELS_DIR = Path("models")
METRICS_DIR = Path("metrics")
PLOTS_DIR = Path("plots")
PREDICTIONS_DIR = Path("predictions")
REPORT = Path("reports/comparison.md")
CHECKED_PARAMS = Path("reports/params.json")
# What teacher outputs the listed methods read: written by check_params, read by
# teacher_targets, which so reruns when the need changes, not whenever the method list does.
TEACHER_NEEDS = Path("data/teacher_needs.json")
# How the students' views are mixed (DataConfig.mixing): written by check_params, read by
# the stages that show students views, so data.mix_alpha reruns them only where data.mix uses it.
MIXING = Path("data/mixing.json")
# Git-ignored; DVC does not delete it before a rerun. KDPIPE_CHECKPOINT_DIR puts it elsewhere:
# a cluster job's clone is deleted with the job, its checkpoints must outlive it.
CHECKPOINT_DIR = Path(os.environ.get("KDPIPE_CHECKPOINT_DIR") or ".checkpoints")
FIGURES = {"accuracy": Path("reports/accuracy.png"), "gains": Path("reports/gains.png"),
           "curves": Path("reports/curves.png"),
           "latency": Path("reports/accuracy_vs_latency.png")}


def model_file(name: str, seed: int) -> Path:
    return MODELS_DIR / f"{name}-{seed}.pt"


def seed_metrics_file(name: str, seed: int) -> Path:
    """One training run's metrics; compare aggregates them over seeds into metrics/<name>.json."""
    return METRICS_DIR / "seeds" / f"{name}-{seed}.json"


def prediction_file(name: str, seed: int) -> Path:
    """One training run's logits on the test split (float32 .npy), for its fidelity metrics."""
    return PREDICTIONS_DIR / f"{name}-{seed}.npy"


def plot_files(name: str, seed: int) -> dict[str, Path]:
    """One run's per-epoch curves, one CSV per curve (DVC draws one plot per file): the folder
    is the plot (`plots:` in dvc.yaml), each file a line in it."""
    return {curve: PLOTS_DIR / curve / f"{name}-{seed}.csv" for curve in ("loss", "accuracy")}
