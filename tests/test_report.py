"""The comparison from per-seed records: aggregates, paired gains, choosing on validation (or
saying plainly that the test set chose), and the figures."""
import pytest

from kdpipe.analysis.report import COST_KEYS, collect, markdown, summary_metrics

SEEDS = [1, 2, 3]
# per model: (val_acc, test_acc) per seed. kd is best on validation, hint best on test.
SCORES = {"teacher": [(80.0, 79.0)],
          "student": [(60.0, 59.0), (61.0, 60.0), (59.0, 58.0)],
          "kd": [(66.0, 60.0), (64.0, 61.0), (65.0, 59.0)],
          "cosine": [(58.0, 57.0), (60.0, 59.0), (59.0, 57.0)],
          "hint": [(62.0, 70.0), (61.0, 71.0), (62.0, 69.0)]}


def records(with_val: bool = True) -> dict[str, list[dict]]:
    runs = {}
    for name, scores in SCORES.items():
        seeds = [42] if name == "teacher" else SEEDS
        runs[name] = []
        for seed, (val, test) in zip(seeds, scores):
            curve = "val_acc" if with_val else "test_acc"
            record = {"seed": seed, "test_acc": test, "curve": curve, "data_sha256": "d",
                      "mlflow_run_id": f"r-{name}-{seed}", "mlflow_model_id": f"m-{name}",
                      "history": [{"epoch": 1, "train_loss": 1.0, curve: val if with_val
                                   else test}], **{k: 1.0 for k in COST_KEYS}}
            if with_val:
                record["val_acc"] = val
            runs[name].append(record)
    return runs


def test_the_best_student_is_chosen_on_validation_and_test_only_reports():
    comparison = collect(records())
    assert comparison["choose_by"] == "val_acc"
    assert comparison["best_student"] == "kd"  # hint is better on test: test does not choose
    assert comparison["best_seed"] == 1 and comparison["best_run"]["mlflow_run_id"] == "r-kd-1"
    report = markdown(comparison)
    assert "Chosen by mean `val_acc`: **kd**" in report and "Chosen on the test set" not in report


def test_without_a_validation_split_the_report_says_test_chose():
    comparison = collect(records(with_val=False))
    assert comparison["choose_by"] == "test_acc" and comparison["best_student"] == "hint"
    assert "**Chosen on the test set**" in markdown(comparison)


def test_gains_are_paired_per_seed_and_aggregates_per_model():
    comparison = collect(records())
    kd_gain = comparison["gains"]["kd"]
    assert kd_gain["diffs"] == pytest.approx([1.0, 1.0, 1.0])
    assert kd_gain["p_value"] == 0.0 and kd_gain["verdict"] == "gain"
    student = comparison["models"]["student"]
    assert student["test_acc"] == pytest.approx(59.0) and student["val_acc"] == 60.0
    assert student["test_acc_per_seed"] == {"1": 59.0, "2": 60.0, "3": 58.0}
    assert comparison["models"]["kd"]["delta_vs_student"] == pytest.approx(1.0)
    summary = summary_metrics(comparison)  # what dvc exp show lists, in this order
    assert list(summary) == ["best", "teacher", "student", "kd", "cosine", "hint"]
    assert summary["best"] == "kd" and summary["teacher"] == {"test": 79.0}
    assert summary["student"] == {"val": 60.0, "test": 59.0}
    assert summary["kd"] == {"val": 65.0, "gain": 1.0}


def test_every_figure_is_drawn_from_the_records(tmp_path, monkeypatch):
    from kdpipe.analysis.figures import draw_all
    from kdpipe.core.paths import FIGURES

    monkeypatch.chdir(tmp_path)
    runs = records()
    draw_all(collect(runs), runs)
    for path in FIGURES.values():
        assert (tmp_path / path).read_bytes()[:4] == b"\x89PNG"


def test_verdicts_are_holm_adjusted_over_the_methods_compared():
    """Alone, cosine (p = 0.0060) and kd (p = 0.034) would both beat the baseline. Among 3
    methods Holm multiplies the smallest p by 3, the next by 2: cosine keeps its gain
    (0.018), kd's becomes noise (0.068); hint (p = 0.62) stays noise."""
    runs = records()
    for name, tests in (("kd", (59.6, 61.0, 59.2)), ("cosine", (60.1, 61.0, 59.3)),
                        ("hint", (58.0, 62.0, 58.5))):
        for record, test in zip(runs[name], tests):
            record["test_acc"] = test
    gains = collect(runs)["gains"]
    assert gains["cosine"]["p_value"] == pytest.approx(0.0060, abs=1e-4)
    assert gains["cosine"]["p_holm"] == pytest.approx(0.0180, abs=1e-4)
    assert gains["cosine"]["verdict"] == "gain"
    assert gains["kd"]["p_value"] == pytest.approx(0.0339, abs=1e-4)
    assert gains["kd"]["p_holm"] == pytest.approx(0.0678, abs=1e-4)
    assert gains["kd"]["verdict"] == "noise"
    assert gains["hint"]["p_holm"] == pytest.approx(gains["hint"]["p_value"], abs=1e-4)
    report = markdown(collect(runs))
    assert "| p | p (Holm) | verdict |" in report and "Holm-adjusted over 3 method(s)" in report


def test_a_markdown_table_aligns_numbers_right_and_refuses_a_ragged_row():
    from kdpipe.core.markdown import table

    assert table(["model", "acc %"], [["kd", "70.10"], ["student", "69.00"]], "lr") == [
        "| model | acc % |", "|---|---:|", "| kd | 70.10 |", "| student | 69.00 |"]
    with pytest.raises(ValueError, match="a table of 2 columns"):
        table(["model", "acc %"], [["kd"]], "lr")


def test_a_p_value_below_what_its_decimals_show_is_written_as_a_bound_never_as_zero():
    from kdpipe.core.markdown import p_cell, p_is

    assert [p_cell(p) for p in (None, 0.0312, 0.001, 0.00049, 0.0)] == [
        "–", "0.031", "0.001", "< 0.001", "< 0.001"]
    assert p_cell(2.1e-5, 4) == "< 0.0001" and p_cell(0.0072, 4) == "0.0072"
    assert [p_is(p) for p in (0.0312, 0.00049)] == ["p = 0.031", "p < 0.001"]


def test_with_one_method_the_seeds_stay_beside_their_gain(tmp_path):
    """What gains.png draws, not that it exists: with a single method its seeds' dots sit just
    right of the mean, inside the axis, not at its edge."""
    from kdpipe.analysis.figures import gains_by_method

    gain = {"mean": 0.5, "ci95": 0.4, "diffs": [0.2, 0.5, 0.8], "verdict": "noise"}
    fig = gains_by_method({"gains": {"kd": gain}})
    ax = fig.axes[0]
    left, right = ax.get_xlim()
    assert (left, right) == (-0.5, 0.5)
    [dots] = ax.collections[-1:]
    xs, ys = dots.get_offsets().T
    assert list(ys) == [0.2, 0.5, 0.8] and all(0 < x < right for x in xs)


def test_timings_taken_under_load_are_marked(monkeypatch):
    from kdpipe.analysis.report import load_lines
    from kdpipe.core import machine

    monkeypatch.setattr(machine.os, "getloadavg", lambda: (5.0, 1.0, 1.0))
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(machine.torch, "get_num_threads", lambda: 2)
    assert machine.other_load() == 1.5  # (5 - the stage's 2 threads) / 2 cores
    lines = load_lines({"student": {"other_load_per_core": 0.0},
                        "kd": {"other_load_per_core": 1.5}})
    assert "Timings taken under load" in lines[1] and "kd (1.50)" in lines[1]
    assert "student" not in lines[1]
    assert load_lines({"student": {"other_load_per_core": 0.1}}) == []


def test_the_accuracy_figure_draws_each_models_mean_ci_and_seeds_at_its_name():
    from kdpipe.analysis.figures import accuracy_by_model

    models = {"student": {"test_acc": 70.0, "test_acc_ci95": 1.0,
                          "test_acc_per_seed": {"42": 69.0, "43": 71.0}},
              "kd": {"test_acc": 72.0, "test_acc_ci95": 0.5,
                     "test_acc_per_seed": {"42": 71.5, "43": 72.5}}}
    ax = accuracy_by_model({"models": models}).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["student", "kd"]
    assert ax.get_xlim() == (-0.5, 1.5)
    means = [line for line in ax.lines if line.get_marker() == "o"]  # not the CI's caps
    assert [(line.get_xdata()[0], line.get_ydata()[0]) for line in means] == [(0, 70.0),
                                                                             (1, 72.0)]
    dots = [c.get_offsets() for c in ax.collections if len(c.get_offsets()) == 2]
    assert [list(d[:, 1]) for d in dots] == [[69.0, 71.0], [71.5, 72.5]]
    assert all(x == i + 0.12 for i, d in enumerate(dots) for x in d[:, 0])


def test_the_curves_and_latency_figures_draw_each_run_and_model_where_it_belongs():
    from kdpipe.analysis.figures import accuracy_vs_latency, learning_curves

    history = [{"epoch": 1, "val_acc": 50.0}, {"epoch": 2, "val_acc": 60.0}]
    runs = {"student": [{"curve": "val_acc", "history": history}] * 2,
            "kd": [{"curve": "val_acc", "history": [{**r, "val_acc": r["val_acc"] + 5}
                                                    for r in history]}]}
    ax = learning_curves(runs).axes[0]
    assert [list(line.get_ydata()) for line in ax.lines] == [[50.0, 60.0], [50.0, 60.0],
                                                             [55.0, 65.0]]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["student", "kd"]
    models = {"teacher": {"inference_ms_batch1": 5.0, "test_acc": 71.0, "test_acc_ci95": None},
              "kd": {"inference_ms_batch1": 0.3, "test_acc": 68.0, "test_acc_ci95": 1.0}}
    ax = accuracy_vs_latency({"models": models}).axes[0]
    points = [(line.get_xdata()[0], line.get_ydata()[0]) for line in ax.lines
              if line.get_marker() == "o"]
    assert points == [(5.0, 71.0), (0.3, 68.0)]
    assert [t.get_text() for t in ax.texts] == ["teacher", "kd"] and ax.get_xscale() == "log"
