"""Accuracy against schedule length (`student.epochs`), where a sweep tried several: at each
length, the best baseline there (every plain recipe and control of that length, chosen on
validation) and each method's best setting there, with its paired validation gain over that
baseline. Patient students gain with longer schedules (Beyer et al., CVPR 2022); a sweep at one
length cannot show it."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kdpipe.core.files import write_with
from kdpipe.core.markdown import plus_minus, table
from kdpipe.measure.stats import paired_by_seed

if TYPE_CHECKING:
    from kdpipe.analysis.settings import Setting

EPOCHS = "student.epochs"
BASELINE = "best baseline"


def by_schedule(models: list[Setting]) -> dict[int, dict[str, Setting]] | None:
    """{epochs: {"best baseline": its Setting, method: its best Setting}}, or None where the
    settings share one schedule length. At each length only the settings trained on its most
    seeds are ranked."""
    lengths = sorted({int(m.setting[EPOCHS]) for m in models if EPOCHS in m.setting})
    if len(lengths) < 2:
        return None
    out = {}
    for epochs in lengths:
        here = [m for m in models if int(m.setting.get(EPOCHS, -1)) == epochs]
        # ranked on the most seeds any setting of this length has: means over fewer do not
        # compare (a length may be tried on fewer seeds than the sweep's, e.g. 3 of 5)
        most = max(len(m.val) for m in here)
        here = [m for m in here if len(m.val) == most]
        best = {}
        for m in sorted(here, key=lambda m: m.mean_val(), reverse=True):
            best.setdefault(BASELINE if m.is_baseline else m.model, m)
        out[epochs] = best
    return out


def gain(row: dict[str, Setting], name: str) -> dict | None:
    """A method's paired validation gain over the best baseline of its schedule length."""
    if name == BASELINE or BASELINE not in row or name not in row:
        return None
    return paired_by_seed(row[name].val, row[BASELINE].val)


def markdown(schedules: dict[int, dict[str, Setting]]) -> list[str]:
    names = sorted({n for row in schedules.values() for n in row if n != BASELINE})
    rows = []
    for epochs, row in schedules.items():
        cells = [str(epochs), f"{row[BASELINE].mean_val():.2f}" if BASELINE in row else "–"]
        for name in names:
            g = gain(row, name)
            cells.append("–" if name not in row else f"{row[name].mean_val():.2f}" + (
                f" ({plus_minus(g['mean'], g['ci95'], '+')})" if g else ""))
        rows.append(cells)
    return ["", "Accuracy against schedule length (validation %, best setting of each at each "
            "length; in brackets its paired gain over that length's best baseline, pp ± 95% "
            "CI):", "", *table(["student.epochs", BASELINE, *names], rows, "r" * (2 + len(names)))]


def figure(schedules: dict[int, dict[str, Setting]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({n for row in schedules.values() for n in row}, key=lambda n: n != BASELINE)
    fig, (acc, gains) = plt.subplots(1, 2, figsize=(10, 4))  # inches
    for name in names:
        lengths = [e for e, row in schedules.items() if name in row]
        acc.plot(lengths, [schedules[e][name].mean_val() for e in lengths], "o-", label=name,
                 color="black" if name == BASELINE else None)
        measured = [(e, gain(schedules[e], name)) for e in lengths]
        measured = [(e, g) for e, g in measured if g]
        if measured:
            gains.errorbar([e for e, _ in measured], [g["mean"] for _, g in measured],
                           yerr=[g["ci95"] or 0 for _, g in measured], fmt="o-", capsize=4,
                           label=name)
    acc.set(xlabel="student epochs", ylabel="validation accuracy %",
            title="Accuracy against schedule length")
    gains.axhline(0, color="grey", linewidth=1)
    gains.set(xlabel="student epochs", ylabel="gain over the best baseline (pp)",
              title="Gain at each length, mean ± 95% CI")
    for ax in (acc, gains):
        ax.legend(fontsize=8)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
