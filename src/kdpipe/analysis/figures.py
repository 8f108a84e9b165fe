"""The report's figures (PNG): accuracy per model with CI and per-seed points, each method's
paired gain per seed with its CI, learning curves, and accuracy against inference latency."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator, ScalarFormatter  # noqa: E402

from kdpipe.core.files import write_with  # noqa: E402
from kdpipe.core.paths import FIGURES  # noqa: E402


def draw_all(comparison: dict, runs: dict[str, list[dict]]) -> None:
    """Write every figure; `runs` are the per-seed records (their curves draw the learning
    curves)."""
    figures = {"accuracy": accuracy_by_model(comparison), "gains": gains_by_method(comparison),
               "curves": learning_curves(runs), "latency": accuracy_vs_latency(comparison)}
    for name, fig in figures.items():
        write_with(FIGURES[name], lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=120))
        plt.close(fig)


def mean_and_seeds(ax, x: float, mean: float, ci95: float | None, per_seed: list[float]):
    """At x: the mean with its 95% CI (black) and, beside it, each seed's value (dots)."""
    ax.errorbar(x, mean, yerr=ci95 or 0, fmt="o", capsize=6, color="black", zorder=3)
    ax.scatter([x + 0.12] * len(per_seed), per_seed, alpha=0.6, s=18)


def labelled(fig, ax, names: list[str], ylabel: str, title: str):
    ax.set_xticks(range(len(names)), names)
    # Half a slot either side of each name: the seeds' dots (x + 0.12) stay beside their mean
    # even with one name, where autoscaling would spread [0, 0.12] over the whole width.
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def accuracy_by_model(comparison: dict):
    models = comparison["models"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for x, name in enumerate(models):
        row = models[name]
        mean_and_seeds(ax, x, row["test_acc"], row["test_acc_ci95"],
                       list(row["test_acc_per_seed"].values()))
    return labelled(fig, ax, list(models), "test accuracy (%)",
                    "Test accuracy: mean ± 95% CI (black), each seed (dots)")


def gains_by_method(comparison: dict):
    """What the paired test sees: each seed's gain over the baseline student of the same seed
    (dots) and the mean with its 95% CI (black); a CI that crosses 0 is noise."""
    methods = comparison["gains"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.axhline(0, color="grey", linewidth=1)
    for x, gain in enumerate(methods.values()):
        mean_and_seeds(ax, x, gain["mean"], gain["ci95"], gain["diffs"])
        ax.annotate(gain["verdict"], (x, gain["mean"]), textcoords="offset points",
                    xytext=(10, -12), fontsize=8)
    return labelled(fig, ax, list(methods), "test accuracy gain over the baseline (pp)",
                    "Paired gain per seed (dots), mean ± 95% CI (black)")


def learning_curves(runs: dict[str, list[dict]]):
    fig, ax = plt.subplots(figsize=(7, 4))
    for color, (name, model_runs) in enumerate(runs.items()):
        for i, run in enumerate(model_runs):
            metric, rows = run["curve"], run["history"]
            ax.plot([r["epoch"] for r in rows], [r[metric] for r in rows],
                    color=f"C{color}", alpha=0.7, label=name if i == 0 else None)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"{metric.replace('_acc', '')} accuracy (%)")
    ax.set_title("Learning curves (one line per seed)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def accuracy_vs_latency(comparison: dict):
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, row in comparison["models"].items():
        ax.errorbar(row["inference_ms_batch1"], row["test_acc"], yerr=row["test_acc_ci95"] or 0,
                    fmt="o", capsize=4)
        ax.annotate(name, (row["inference_ms_batch1"], row["test_acc"]),
                    textcoords="offset points", xytext=(6, 4))
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.set_xlabel("inference latency at batch 1 (ms, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy against inference cost")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
