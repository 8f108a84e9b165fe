"""The sweep report: settings grouped by the params each model reads, gains paired per seed on
validation against the same-recipe and the best baseline, Holm-adjusted, the best setting
chosen on validation, and only its test gains reported."""
import json
import subprocess

import pytest

from kdpipe.analysis import settings, sweep
from kdpipe.analysis.settings import comparable, trained_models
from kdpipe.analysis.sweep import analyse, chosen_test_metrics, differing_keys, experiments
from kdpipe.analysis.sweep_report import figure_label, markdown
from kdpipe.measure.stats import verdict
from tests.project import clean_env, clone, edit_params, read_json, sh

SEEDS = ("1", "2", "3", "4")
COMMON = {"seed": 42, "data.source": "x", "teacher.epochs": 10}


def row(val: list[float], test: list[float]) -> dict:
    return {"val_acc_per_seed": dict(zip(SEEDS, val)),
            "test_acc_per_seed": dict(zip(SEEDS, test))}


def experiment(name: str, epochs: int, temperature: float, student, kd, dkd=None):
    params = {**COMMON, "student.epochs": epochs, "student.schedule": "constant",
              "distill.kd.temperature": temperature, "distill.dkd.beta": 8.0}
    models = {"teacher": {"test_acc_per_seed": {"42": 80.0}}, "student": student, "kd": kd}
    if dkd:
        models["dkd"] = dkd
    return name, params, models


# Baseline: 10 epochs 60, 20 epochs 62 (the best baseline). kd at T=4 beats its same-recipe
# baseline by ~3 on validation but the best baseline by only ~1; kd at T=1 is noise.
FOUND = [
    experiment("base", 10, 2.0, row([60, 61, 59, 60], [59, 60, 58, 59]),
               row([61, 61.5, 59.5, 60.5], [60, 60, 59, 59])),
    experiment("t4", 10, 4, row([60, 61, 59, 60], [59, 60, 58, 59]),
               row([63, 64.1, 61.9, 63.2], [70, 71, 69, 70]),
               dkd=row([60.2, 61.1, 59.3, 60.1], [59, 60, 58, 59])),
    experiment("t1", 10, 1.0, row([60, 61, 59, 60], [59, 60, 58, 59]),
               row([60.5, 60.8, 59.4, 59.9], [59, 60, 58, 59])),
    experiment("long", 20, 2.0, row([62, 63, 61, 62], [61, 62, 60, 61]),
               row([61, 62.5, 60, 61.5], [60, 61, 59, 60])),
    experiment("other-data", 10, 2.0, row([90, 90, 90, 90], [90, 90, 90, 90]),
               row([99, 99, 99, 99], [99, 99, 99, 99])),
]
FOUND[-1][1]["data.source"] = "elsewhere"


def test_settings_are_grouped_by_what_each_model_reads_and_counted_once():
    models = trained_models(FOUND[:4])
    students = [m for m in models if m.model == "student"]
    assert len(students) == 2  # the 10-epoch baseline is the same in base, t4 and t1
    assert sorted(m.setting["distill.kd.temperature"] for m in models if m.model == "kd"
                  and m.recipe["student.epochs"] == 10) == [1.0, 2.0, 4]
    assert differing_keys(models) == ["distill.kd.temperature", "student.epochs"]


def test_the_best_setting_is_chosen_on_validation_and_tested_once():
    result = analyse(trained_models(FOUND[:4]))
    assert result["best_baseline"].recipe["student.epochs"] == 20
    chosen = result["chosen"]["trained"]
    assert (chosen.model, chosen.setting["distill.kd.temperature"]) == ("kd", 4)
    same, best = result["chosen"]["val_vs_same"], result["chosen"]["val_vs_best"]
    assert same["mean"] == pytest.approx(3.05) and best["mean"] == pytest.approx(1.05)
    assert verdict(same, "p_holm") == "gain"  # survives Holm over the 5 distilled settings
    assert result["test"]["vs_same"]["mean"] == pytest.approx(11.0)
    assert result["test"]["vs_best"]["mean"] == pytest.approx(9.0)
    ps = [r["val_vs_same"]["p_value"] for r in result["rows"]]
    assert all(r["val_vs_same"]["p_holm"] >= p for r, p in zip(result["rows"], ps))
    t1 = next(r for r in result["rows"] if r["trained"].setting.get("distill.kd.temperature") == 1)
    assert verdict(t1["val_vs_same"], "p_holm") == "noise"


def test_experiments_on_other_data_are_left_out_and_counted():
    """other-data scores 99: on its own data, not comparable; it must neither be chosen nor
    serve as the best baseline."""
    models, left_out = comparable(FOUND)
    assert left_out == 1 and {m.experiment for m in models} == {"base", "t4", "t1", "long"}
    result = analyse(models)
    assert result["best_baseline"].experiment == "long"
    assert result["chosen"]["trained"].experiment != "other-data"


def test_the_report_names_the_choice_and_calls_noise_noise():
    models, left_out = comparable(FOUND)
    text = markdown(analyse(models), differing_keys(models), left_out)
    assert "**Chosen on validation: kd, distill.kd.temperature=4, student.epochs=10.**" in text
    assert "| noise |" in text and "Holm" in text and "1 experiment(s) on other data" in text


def test_figure_labels_keep_every_differing_key_and_drop_the_methods_own_prefix():
    # Two dist settings that differ only in the last key: cutting labels made them the same.
    keys = ["distill.dist.beta", "distill.dist.gamma", "distill.dist.temperature",
            "student.lr"]
    common = {"distill.dist.beta": 2, "distill.dist.gamma": 2, "distill.dist.temperature": 4}
    labels = [figure_label(settings.Setting("dist", {**common, "student.lr": lr}, {}, {}, {}, "x"),
                           keys) for lr in (0.001, 0.003)]
    assert labels[0].replace("\n", " ") == (
        "dist: beta=2, gamma=2, temperature=4, student.lr=0.001")
    assert labels[0] != labels[1] and all(len(line) <= 44 for line in labels[1].splitlines())
    assert figure_label(settings.Setting("kd", {"student.lr": 0.001}, {}, {}, {}, "x"), []) == (
        "kd: params shared by all")


def test_the_sweep_command_reads_real_dvc_experiments(built, tmp_path):
    repo = clone(built, tmp_path / "repo")
    edit_params(repo, {"seeds": [42, 43]})
    sh(["dvc", "repro"], repo)
    sh(["git", "commit", "-qam", "two seeds"], repo)
    for change in ([], ["-S", "distill.kd.temperature=1"], ["-S", "distill.kd.temperature=4"]):
        sh(["dvc", "exp", "run", *change], repo)  # the first: the committed params
    done = subprocess.run(["python", "-m", "kdpipe.analysis.sweep"], cwd=repo, capture_output=True,
                          text=True, env={**clean_env(), "PYTHONPATH": str(repo / "src")})
    assert done.returncode == 0, done.stderr
    report = read_json(repo / "reports" / "sweep.json")
    kd_settings = {json.dumps(r["setting"].get("distill.kd.temperature"))
                   for r in report["rows"] if r["model"] == "kd"}
    assert kd_settings == {"1", "2.0", "4"}
    assert report["chosen"] and report["chosen_test"]["vs_best"]["seeds"] == 2
    assert (repo / "reports" / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert "Chosen on validation" in (repo / "reports" / "sweep.md").read_text()
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    [run] = mlflow.search_runs(experiment_names=["knowledge-distillation"],
                               filter_string="attributes.run_name = 'sweep'",
                               output_format="list")
    assert "summary/chosen_test_gain_vs_best" in run.data.metrics


def test_a_failed_experiment_is_left_out(monkeypatch, capsys):
    """DVC lists a failed queued run with the params it was given and the metrics of the files
    it started from: counting it would credit the baseline's scores to its params."""
    def entry(name, error=None):
        data = {"params": {"params.yaml": {"data": {"seed": 42}}}}
        return {"rev": name * 8, "name": name, "error": error, "data": data}

    shown = [{**entry("base"), "experiments": [
        {"revs": [entry("good")]},
        {"revs": [entry("bad", {"msg": "Experiment run failed", "type": ""})]}]}]
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 0, json.dumps(shown), ""))
    monkeypatch.setattr(sweep, "models_at", lambda rev: {"student": {}})
    assert [name for name, _, _ in experiments(False)] == ["base", "good"]
    assert "left out experiment bad: Experiment run failed" in capsys.readouterr().err


def test_a_queued_or_running_experiment_is_left_out(monkeypatch, capsys):
    """Until it finishes, DVC lists an experiment with the params it was given and the metrics
    of the commit it started from (seen with `dvc exp run --temp` running beside a sweep)."""
    def group(name, state=None):
        data = {"params": {"params.yaml": {"data": {"seed": 42}}}}
        executor = {"state": state, "name": "tempdir", "local": None} if state else None
        return {"name": name, "executor": executor,
                "revs": [{"rev": name * 8, "name": name, "error": None, "data": data}]}

    shown = [{"rev": "b" * 40, "name": "base", "error": None,
              "data": {"params": {"params.yaml": {"data": {"seed": 42}}}},
              "experiments": [group("done"), group("live", "running"), group("next", "queued"),
                              group("collected", "success")]}]
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 0, json.dumps(shown), ""))
    monkeypatch.setattr(sweep, "models_at", lambda rev: {"student": {}})
    unfinished = {}
    assert [name for name, _, _ in experiments(False, unfinished)] == ["base", "done",
                                                                       "collected"]
    assert {name: e["state"] for name, e in unfinished.items()} == {"live": "running",
                                                                    "next": "queued"}
    err = capsys.readouterr().err
    assert "left out experiment live: running, not finished" in err
    assert "left out experiment next: queued, not finished" in err


def test_a_p_value_of_zero_is_logged_as_zero_and_none_is_not_logged():
    zero = chosen_test_metrics("vs_best", {"mean": 1.0, "p_value": 0.0})
    assert zero == {"summary/chosen_test_gain_vs_best": 1.0, "summary/chosen_test_p_vs_best": 0.0}
    one_seed = chosen_test_metrics("vs_same", {"mean": 0.5, "p_value": None})
    assert one_seed == {"summary/chosen_test_gain_vs_same": 0.5}


def test_a_workspace_changed_since_its_outputs_were_made_is_left_out(monkeypatch, capsys):
    """A stopped run or an edited params.yaml leaves the workspace's params ahead of its
    metrics: counting it would credit those metrics to params that did not produce them."""
    data = {"params": {"params.yaml": {"data": {"seed": 42}}}}
    shown = [{"rev": "workspace", "name": None, "data": data},
             {"rev": "a" * 40, "name": "main", "data": data}]

    def run(status):
        def fake(cmd, *a, **k):
            out = status if cmd[:2] == ["dvc", "status"] else json.dumps(shown)
            return subprocess.CompletedProcess(cmd, 0, out, "")
        return fake

    monkeypatch.setattr(sweep, "models_at", lambda rev: {"student": {}})
    monkeypatch.setattr(subprocess, "run", run('{"distill@dist-42": ["changed deps"]}'))
    assert [name for name, _, _ in experiments(False)] == ["main"]
    assert "left out the workspace" in capsys.readouterr().err
    monkeypatch.setattr(subprocess, "run", run("{}"))
    assert [name for name, _, _ in experiments(False)] == ["workspace", "main"]


def test_accuracy_against_schedule_length_where_the_sweep_tried_several(tmp_path):
    """At each student.epochs, the best baseline there and each method's best setting, with its
    gain over that baseline; nothing where all settings share one length."""
    from kdpipe.analysis import schedule

    models = trained_models(FOUND[:4])
    table = schedule.by_schedule(models)
    assert sorted(table) == [10, 20]
    assert table[20][schedule.BASELINE].recipe["student.epochs"] == 20
    assert table[10]["kd"].setting["distill.kd.temperature"] == 4  # kd's best at 10 epochs
    assert schedule.gain(table[10], "kd")["mean"] == pytest.approx(3.05)
    assert schedule.gain(table[20], "kd")["mean"] == pytest.approx(-0.75)
    lines = "\n".join(schedule.markdown(table))
    assert "| 10 | 60.00 |" in lines and "(+3.05 ±" in lines
    schedule.figure(table, tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert schedule.by_schedule(trained_models(FOUND[:3])) is None


def test_the_alpha_of_no_mixing_makes_no_setting_of_its_own():
    """Stages read data.mix_alpha only with a data.mix: an experiment that changed only it
    trained the same students (from the run-cache), counted once."""
    base = experiment("base", 10, 2.0, row([60, 61, 59, 60], [59, 60, 58, 59]),
                      row([61, 61.5, 59.5, 60.5], [60, 60, 59, 59]))
    same = experiment("alpha", 10, 2.0, row([60, 61, 59, 60], [59, 60, 58, 59]),
                      row([61, 61.5, 59.5, 60.5], [60, 60, 59, 59]))
    base[1].update({"data.mix": "none", "data.mix_alpha": 1.0})
    same[1].update({"data.mix": "none", "data.mix_alpha": 0.5})
    models, _ = comparable([base, same])
    assert sorted(m.model for m in models) == ["kd", "student"]
    assert all("data.mix_alpha" not in m.setting for m in models)
    base[1]["data.mix"] = same[1]["data.mix"] = "mixup"
    models, _ = comparable([base, same])
    assert sorted(m.setting["data.mix_alpha"] for m in models if m.model == "kd") == [0.5, 1.0]


def test_the_students_views_and_mixing_are_a_recipe_not_a_reason_to_leave_out():
    """data.views, data.mix and data.mix_alpha feed the students only (the teacher trains on
    teacher.views): a mixed-view experiment compares with a plain one, its baseline is another
    baseline recipe."""
    plain = experiment("plain", 10, 2.0, row([60, 61, 59, 60], [59, 60, 58, 59]),
                       row([61, 61.5, 59.5, 60.5], [60, 60, 59, 59]))
    mixed = experiment("cutmix", 10, 2.0, row([62, 63, 61, 62], [61, 62, 60, 61]),
                       row([64, 65, 63, 64], [63, 64, 62, 63]))
    plain[1].update({"data.views": 8, "data.mix": "none"})
    mixed[1].update({"data.views": 8, "data.mix": "cutmix"})
    models, left_out = comparable([plain, mixed])
    assert left_out == 0
    students = [m for m in models if m.model == "student"]
    assert sorted(m.recipe["data.mix"] for m in students) == ["cutmix", "none"]
    result = analyse(models)
    assert result["best_baseline"].recipe["data.mix"] == "cutmix"
    kd_mixed = next(r for r in result["rows"] if r["trained"].setting["data.mix"] == "cutmix")
    assert kd_mixed["same_recipe"].recipe["data.mix"] == "cutmix"


def only(seeds: tuple[str, ...], r: dict) -> dict:
    """A models.json row trained on some seeds only."""
    return {k: {s: v for s, v in per_seed.items() if s in seeds} for k, per_seed in r.items()}


def on_seeds(found, seeds: tuple[str, ...]):
    """An experiment of `found` as if trained with `seeds` only."""
    name, params, models = found
    return (name, {**params, "seeds": [int(s) for s in seeds]},
            {m: only(seeds, r) if "val_acc_per_seed" in r else r for m, r in models.items()})


def test_a_setting_on_some_seeds_pairs_over_them_and_is_not_ranked():
    """kd at T=4 (the best) trained on seeds 1-3 of 1-4: its gains pair over 3 seeds, but its
    mean over 3 seeds does not rank against means over 4; the report names its seeds."""
    workspace = on_seeds(FOUND[0], SEEDS)
    partial = on_seeds(FOUND[1], SEEDS[:3])
    models, left_out = comparable([workspace, partial])
    assert left_out == 0
    result = analyse(models)
    t4 = next(r for r in result["rows"] if r["trained"].setting["distill.kd.temperature"] == 4)
    assert not t4["trained"].complete and t4["val_vs_same"]["seeds"] == 3
    assert result["chosen"]["trained"].setting["distill.kd.temperature"] == 2.0
    assert "(seeds 1-3)" in markdown(result, differing_keys(models), left_out)


def test_one_setting_trained_on_the_rest_of_the_seeds_elsewhere_counts_in_full():
    workspace = on_seeds(FOUND[0], SEEDS)
    first, rest = on_seeds(FOUND[1], SEEDS[:2]), on_seeds(FOUND[1], SEEDS[2:])
    models, _ = comparable([workspace, first, ("t4-rest", *rest[1:])])
    t4 = next(m for m in models if m.model == "kd" and m.setting["distill.kd.temperature"] == 4)
    assert t4.complete and sorted(t4.val) == list(SEEDS)
    assert analyse(models)["chosen"]["trained"] is t4


def test_an_experiment_on_none_of_the_sweeps_seeds_is_left_out():
    """A confirmation's fresh seeds must not enter the selection it confirms."""
    workspace = on_seeds(FOUND[0], SEEDS[:2])
    fresh = on_seeds(FOUND[1], SEEDS[2:])
    models, left_out = comparable([workspace, fresh])
    assert left_out == 1 and {m.experiment for m in models} == {"base"}
    assert all(sorted(m.val) == list(SEEDS[:2]) for m in models)


def test_a_schedule_length_tried_on_fewer_seeds_is_in_the_curve():
    models, _ = comparable([on_seeds(FOUND[0], SEEDS), on_seeds(FOUND[3], SEEDS[:3])])
    table = sweep.schedule.by_schedule(models)
    assert sorted(table) == [10, 20] and len(table[20]["kd"].val) == 3
    assert sweep.schedule.gain(table[20], "kd")["seeds"] == 3
