"""Where stages read and write, relative to the workspace DVC runs them in."""
from pathlib import Path

PREPARED_DIR = Path("data/prepared")
TARGETS_DIR = Path("data/teacher_targets")
MODELS_DIR = Path("models")
METRICS_DIR = Path("metrics")
PLOTS_DIR = Path("plots")
REPORT = Path("reports/comparison.md")
CHECKPOINT_DIR = Path(".checkpoints")  # git-ignored; DVC does not delete it before a rerun
