"""The sweep report's text and figure: each setting by the params the sweep varied, its
validation gains with their verdicts, the chosen setting's test gains, and the gains drawn with
their CIs (kdpipe.analysis.sweep computes them)."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from kdpipe.core.files import write_with
from kdpipe.core.markdown import p_cell, plus_minus, table
from kdpipe.measure.stats import verdict

if TYPE_CHECKING:
    from kdpipe.analysis.settings import Setting


def seed_range(seeds: list[int]) -> str:
    """42-46 for consecutive seeds, else the list."""
    consecutive = seeds == list(range(seeds[0], seeds[0] + len(seeds)))
    return f"{seeds[0]}-{seeds[-1]}" if consecutive and len(seeds) > 1 else \
        ", ".join(map(str, seeds))


def describe(m: Setting, keys: list[str]) -> str:
    """The setting by the params the sweep varied; none: it shares every param it read with
    the other settings (not necessarily the committed ones: a lone `dvc exp run -S` is one)."""
    shown = [f"{k}={m.setting[k]}" for k in keys if k in m.setting]
    return ", ".join(shown) or "params shared by all"


def figure_label(m: Setting, keys: list[str], width: int = 44) -> str:
    """A y-axis label: the method, then its setting without the `distill.<method>.` prefix the
    method already names, wrapped (not cut: two settings may differ only in their last key)."""
    setting = describe(m, keys).replace(f"distill.{m.model}.", "")
    return textwrap.fill(f"{m.model}: {setting}", width)


def val_cell(m: Setting) -> str:
    """Mean validation accuracy, with its seeds where they are not all the sweep's."""
    seeds = "" if m.complete else f" (seeds {seed_range(sorted(int(s) for s in m.val))})"
    return f"{m.mean_val():.2f}{seeds}"


def _gain(g: dict | None, p_key: str = "p_holm") -> list[str]:
    """Three cells: mean ± CI, p, verdict."""
    if not g:
        return ["–", "–", "–"]
    p = p_cell(g.get(p_key))
    return [plus_minus(g["mean"], g["ci95"], "+"), p, verdict(g, p_key)]


def markdown(result: dict, keys: list[str], left_out: int) -> str:
    best, rows = result["best_baseline"], result["rows"]
    experiments = len({r["trained"].experiment for r in rows})
    lines = ["# Sweep: gains chosen on validation, confirmed once on test", "",
             f"{len(rows)} distilled settings and {len(result['baselines'])} baseline recipes "
             f"({experiments} experiment{'' if experiments == 1 else 's'} with distilled "
             "students; identical settings counted once). Gains are paired per seed, in "
             "accuracy points, mean ± 95% CI; p: paired t-test, Holm-adjusted for the settings "
             "tried; noise: adjusted p >= 0.05.",
             "", f"Selected on validation (seeds {seed_range(result['seeds'])}); test measured "
             "once, for the chosen setting. Baselines: every plain recipe and control tried "
             f"({len(result['baselines'])}); the best, chosen on validation: "
             f"**{best.model}, {describe(best, keys)}**, val {best.mean_val():.2f}%.", "",
             *table(["baseline", "setting", "val acc %"],
                    [[b.model + (" (control)" if b.control else ""), describe(b, keys),
                      val_cell(b)]
                     for b in sorted(result["baselines"], key=lambda b: -b.mean_val())], "llr"),
             ""]
    if left_out:
        lines += [f"({left_out} experiment(s) on other data, teacher or seed settings left out: "
                  "their scores do not compare.)", ""]
    if not all(m.complete for m in [*result["baselines"], *(r["trained"] for r in rows)]):
        lines += ["(A setting with its seeds named was trained on only some of the sweep's: its "
                  "gains pair over those, and it is not ranked. Train the other seeds, e.g. "
                  "`dvc exp run -S seeds=[...]`, and it counts in full.)", ""]
    lines += table(["method", "setting", "val acc %", "val gain vs same-recipe baseline",
                    "p (Holm)", "verdict", "val gain vs best baseline", "p (Holm)", "verdict"],
                   [[r["trained"].model, describe(r["trained"], keys),
                     val_cell(r["trained"]), *_gain(r["val_vs_same"]),
                     *_gain(r["val_vs_best"])] for r in rows], "llrrrlrrl")
    chosen, test = result["chosen"], result["test"]
    if chosen:
        m = chosen["trained"]
        lines += ["", f"**Chosen on validation: {m.model}, {describe(m, keys)}.** Its test "
                  "gains, measured once (not adjusted: one confirmatory test each):", "",
                  *table(["test gain vs", "mean ± CI (pp)", "p", "verdict"],
                         [["the same-recipe baseline", *_gain(test["vs_same"], "p_value")],
                          ["the best baseline", *_gain(test["vs_best"], "p_value")]], "lrrl")]
        lines += fidelity_table({"chosen setting": m, "best baseline": best})
    return "\n".join(lines) + "\n"


def fidelity_table(settings: dict[str, Setting]) -> list[str]:
    """Fidelity on test (kdpipe.measure.fidelity), means over seeds, where the experiments
    have it."""
    if not all(m.fidelity for m in settings.values()):
        return []
    rows = [[label, f"{m.fidelity['agreement']:.2f}", f"{m.fidelity['kl_to_teacher']:.3f}",
             f"{m.fidelity['test_ece']:.2f}"] for label, m in settings.items()]
    return ["", *table(["fidelity on test", "agreement with teacher %",
                        "KL(teacher ‖ model) nats", "ECE %"], rows, "lrrr")]


def figure(result: dict, keys: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(rows) + 1.5))  # inches; labels wrap to 2 lines
    for y, r in enumerate(rows):
        g = r["val_vs_best"]
        color = {"gain": "tab:green", "loss": "tab:red"}.get(verdict(g, "p_holm"), "grey")
        ax.errorbar(g["mean"], y, xerr=g["ci95"] or 0, fmt="o", color=color, capsize=4)
    test = result["test"]
    if test:
        g = test["vs_best"]
        ax.errorbar(g["mean"], 0, xerr=g["ci95"] or 0, fmt="D", color="black", capsize=4,
                    label="chosen setting, on test")
        ax.legend(loc="lower right", fontsize=8)
    ax.axvline(0, color="grey", linewidth=1)
    ax.set_yticks(range(len(rows)), [figure_label(r["trained"], keys) for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("validation gain over the best baseline (pp), mean ± 95% CI")
    ax.set_title("Sweep: green = gain after Holm, grey = noise")
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
