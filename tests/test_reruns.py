"""A change reruns exactly what it affects. The table below is the spec of which stage reads
which params key; for every key in params.yaml, changing it makes `dvc status` name exactly
those stages (check_params declares the whole file, so it is stale for every key)."""
import subprocess

import pytest
import yaml

from tests.conftest import ROOT
from tests.project import (
    and_export,
    chosen_student,
    clean_env,
    clone,
    edit_params,
    ran_stages,
    read_json,
    sh,
    stale_stages,
)

TRAINING = ["train_teacher", "train_student@42", "distill@kd-42", "distill@cosine-42",
            "distill@hint-42"]
STUDENTS = ["train_student@42", "distill@kd-42", "distill@cosine-42", "distill@hint-42"]

# params key -> (a new valid value, the stages that read it besides check_params)
READERS = {
    # train_student: with data.views the views are params `seed`'s (the teacher's with
    # teacher.views)
    "seed": (7, ["prepare", "train_teacher", "teacher_targets", "train_student@42",
                 "distill@kd-42", "distill@cosine-42", "distill@hint-42", "compare", "export"]),
    "seeds": ([42, 43], ["compare", "train_student@43", "distill@kd-43", "distill@cosine-43",
                         "distill@hint-43"]),
    "device": ("cpu", [*TRAINING, "teacher_targets"]),
    "precision": ("bf16", [*TRAINING, "teacher_targets", "export"]),  # export times bf16 too
    "threads": (1, [*TRAINING, "teacher_targets", "export"]),
    "compile": (True, []),  # a speed switch: changes no result
    "data.source": ("elsewhere.tar.gz", ["prepare"]),
    "data.limit_train": (301, ["prepare"]),
    "data.limit_test": (201, ["prepare"]),
    "data.augment": (True, [*TRAINING, "teacher_targets"]),
    # the students' views (the teacher trains on its own teacher.views); their mixing reaches
    # the stages through data/mixing.json from check_params (test below)
    "data.views": (2, [*STUDENTS, "teacher_targets"]),
    "data.mix": ("mixup", []),
    "data.mix_alpha": (0.5, []),
    "data.val_fraction": (0.2, ["prepare"]),
    "data.image_size": (24, ["prepare"]),
    "data.mean": ([0.5, 0.5, 0.5], [*TRAINING, "teacher_targets", "export"]),
    "data.std": ([0.5, 0.5, 0.5], [*TRAINING, "teacher_targets", "export"]),
    "teacher.epochs": (2, ["train_teacher"]),
    "teacher.lr": (0.002, ["train_teacher"]),
    "teacher.batch_size": (64, ["train_teacher"]),
    "teacher.schedule": ("cosine", ["train_teacher"]),
    "teacher.arch": ("resnet18", ["train_teacher"]),
    "teacher.code": ("stages/compare.py", ["train_teacher", "teacher_targets",
                                              "distill@kd-42", "distill@cosine-42",
                                              "distill@hint-42"]),  # its file is their dep
    "teacher.feature_layer": ("features.4", ["teacher_targets", "distill@kd-42",
                                             "distill@cosine-42", "distill@hint-42"]),
    "teacher.pretrained": ("teachers/deepnn.pt", ["train_teacher"]),
    "teacher.warmup_epochs": (1, ["train_teacher"]),
    "teacher.label_smoothing": (0.1, ["train_teacher"]),
    "teacher.grad_clip": (1.0, ["train_teacher"]),
    "teacher.views": (2, ["train_teacher"]),
    "student.epochs": (2, STUDENTS),
    "student.lr": (0.002, STUDENTS),
    "student.batch_size": (64, STUDENTS),
    "student.schedule": ("cosine", STUDENTS),
    "student.arch": ("resnet18", STUDENTS),
    "student.code": ("src/kdpipe/learn/loop.py", [*STUDENTS, "export"]),  # export rebuilds it
    "student.feature_layer": ("features.3", ["distill@kd-42", "distill@cosine-42",
                                             "distill@hint-42"]),
    "student.warmup_epochs": (1, STUDENTS),
    "student.label_smoothing": (0.1, STUDENTS),
    "student.grad_clip": (1.0, STUDENTS),
    "distill.kd.temperature": (4.0, ["distill@kd-42"]),
    "distill.kd.soft_target_weight": (0.5, ["distill@kd-42"]),
    "distill.kd.ce_weight": (0.5, ["distill@kd-42"]),
    "distill.kd.teacher": ("shuffled", ["distill@kd-42"]),
    "distill.cosine.hidden_weight": (0.5, ["distill@cosine-42"]),
    "distill.cosine.ce_weight": (0.5, ["distill@cosine-42"]),
    "distill.hint.feature_weight": (0.5, ["distill@hint-42"]),
    "distill.hint.ce_weight": (0.5, ["distill@hint-42"]),
    # teacher_targets caches features only if a listed method reads them: it depends on that
    # need (data/teacher_needs.json from check_params), not on the list
    "distill.methods": (["kd", "cosine", "hint", "lskd"], ["compare", "distill@lskd-42"]),
    # no dkd, lskd, dist, tfkd or fm stage runs in the quick pipeline: their params rerun
    # nothing there
    "distill.dkd.alpha": (2.0, []),
    "distill.dkd.beta": (4.0, []),
    "distill.dkd.temperature": (2.0, []),
    "distill.dkd.ce_weight": (0.5, []),
    "distill.dkd.warmup_epochs": (0, []),
    "distill.dkd.teacher": ("shuffled", []),
    "distill.lskd.temperature": (4.0, []),
    "distill.lskd.soft_target_weight": (0.5, []),
    "distill.lskd.ce_weight": (0.5, []),
    "distill.lskd.teacher": ("shuffled", []),
    "distill.dist.beta": (1.0, []),
    "distill.dist.gamma": (1.0, []),
    "distill.dist.temperature": (1.0, []),
    "distill.dist.ce_weight": (0.5, []),
    "distill.dist.teacher": ("shuffled", []),
    "distill.tfkd.correct_prob": (0.9, []),
    "distill.tfkd.temperature": (4.0, []),
    "distill.tfkd.reg_weight": (1.0, []),
    "distill.tfkd.ce_weight": (0.5, []),
    "distill.fm.temperature": (2.0, []),
    "distill.fm.soft_target_weight": (0.5, []),
    "distill.fm.ce_weight": (0.5, []),
    "distill.fm.teacher": ("shuffled", []),
    # export reads only these; the chosen model reaches it through models/chosen.json
    "export.int8": (False, ["export"]),
    "export.calibration_images": (500, ["export"]),
    "export.int8_max_loss": (2.0, ["export"]),
    "mlflow.experiment": ("another-experiment", []),  # where runs are recorded, not results
}


# Changed together with a key, to keep the params valid (warm-up must be shorter than training;
# the quick pipeline trains one epoch).
ALSO = {"teacher.warmup_epochs": {"teacher": {"epochs": 2}},
        "student.warmup_epochs": {"student": {"epochs": 2}}}


def leaf_keys(node: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        keys += leaf_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [prefix + key]
    return keys


def nested(dotted: str, value) -> dict:
    for part in reversed(dotted.split(".")):
        value = {part: value}
    return value


def test_the_table_covers_every_key_of_params_yaml():
    assert sorted(leaf_keys(yaml.safe_load((ROOT / "params.yaml").read_text()))) == \
        sorted(READERS)


def test_each_key_makes_exactly_its_readers_stale(built, tmp_path):
    repo = clone(built, tmp_path / "repo")
    original = (repo / "params.yaml").read_text()
    wrong = {}
    for key, (value, readers) in READERS.items():
        edit_params(repo, nested(key, value))
        edit_params(repo, ALSO.get(key, {}))
        stale = stale_stages(repo)
        if stale != sorted(["check_params", *readers]):
            wrong[key] = stale
        (repo / "params.yaml").write_text(original)
    assert wrong == {}, "keys whose stale stages differ from the table"


def test_stray_and_temp_files_rerun_nothing(built, tmp_path):
    repo = clone(built, tmp_path / "repo")
    (repo / "models" / "student-99.pt").write_bytes(b"an old seed's model")
    (repo / "plots" / "notes.csv").write_text("epoch\n1\n")
    tmp = repo / "metrics" / "seeds" / ".kd-42.json.tmp-x1y2"  # a killed atomic write
    tmp.mkdir()
    (tmp / "kd-42.json").write_text("{")
    assert stale_stages(repo) == []


def test_a_method_param_reruns_only_that_method_then_a_seed_only_its_students(built, tmp_path):
    repo = clone(built, tmp_path / "repo")
    before = chosen_student(repo)
    edit_params(repo, {"distill": {"kd": {"temperature": 4}}})
    assert ran_stages(sh(["dvc", "repro"], repo)) == ["check_params", "distill@kd-42",
                                                      "compare", *and_export(before, repo)]
    before = chosen_student(repo)
    edit_params(repo, {"seeds": [42, 43]})
    assert sorted(ran_stages(sh(["dvc", "repro"], repo))) == sorted([
        "check_params", "compare", "distill@cosine-43", "distill@hint-43", "distill@kd-43",
        "train_student@43", *and_export(before, repo)])
    kd = read_json(repo / "metrics" / "models.json")["kd"]
    assert set(kd["test_acc_per_seed"]) == {"42", "43"} and kd["test_acc_ci95"] is not None
    assert "paired t-test p =" in (repo / "reports" / "comparison.md").read_text()


def test_adding_a_method_runs_only_its_stages_and_compare(built, tmp_path):
    repo = clone(built, tmp_path / "repo")
    before = chosen_student(repo)
    edit_params(repo, {"distill": {"methods": ["kd", "cosine", "hint", "dkd", "lskd"]}})
    # dkd and lskd read only logits: the teacher outputs the methods need are unchanged, so the
    # teacher pass does not rerun, nor does any other method's stage
    assert sorted(ran_stages(sh(["dvc", "repro"], repo))) == sorted([
        "check_params", "compare", "distill@dkd-42", "distill@lskd-42",
        *and_export(before, repo)])
    models = read_json(repo / "metrics" / "models.json")
    assert sorted(models) == ["cosine", "dkd", "hint", "kd", "lskd", "student", "teacher"]
    assert {"dkd", "lskd"} <= set(read_json(repo / "metrics" / "comparison.json"))
    assert "| **lskd**" in (repo / "reports" / "comparison.md").read_text()


def test_the_teacher_pass_follows_what_the_methods_read_not_the_list(built, tmp_path):
    """Without cosine and hint no listed method reads features: the cache drops them (the
    teacher pass reruns, and with the cache the distill stages that read it)."""
    repo = clone(built, tmp_path / "repo")
    before = chosen_student(repo)
    edit_params(repo, {"distill": {"methods": ["kd"]}})
    assert sorted(ran_stages(sh(["dvc", "repro"], repo))) == sorted([
        "check_params", "teacher_targets", "distill@kd-42", "compare",
        *and_export(before, repo)])
    assert read_json(repo / "data" / "teacher_needs.json") == {"needs": ["logits"]}
    assert not (repo / "data" / "teacher_targets" / "features.npy").exists()


def test_the_mixing_weight_reruns_the_students_only_where_a_mixing_mode_uses_it(built, tmp_path):
    """data.mix and data.mix_alpha reach the stages that show students views through
    data/mixing.json (check_params), which names the alpha only with a mode."""
    repo = clone(built, tmp_path / "repo")
    readers = sorted([*STUDENTS, "teacher_targets"])
    edit_params(repo, {"data": {"mix_alpha": 0.5}})
    assert ran_stages(sh(["dvc", "repro"], repo)) == ["check_params"]
    edit_params(repo, {"data": {"views": 2, "mix": "mixup"}})
    sh(["dvc", "repro", "-s", "check_params"], repo)
    assert read_json(repo / "data" / "mixing.json") == {"data.mix": "mixup",
                                                       "data.mix_alpha": 0.5}
    assert stale_stages(repo) == readers
    sh(["dvc", "commit", "-f"], repo)  # take the stages as run with these params
    assert stale_stages(repo) == []
    edit_params(repo, {"data": {"mix_alpha": 2.0}})
    sh(["dvc", "repro", "-s", "check_params"], repo)
    assert stale_stages(repo) == readers


def test_export_reruns_only_when_the_chosen_model_changes(built, tmp_path):
    """compare rewrites models/chosen.json on every run; export follows only a change of it."""
    repo = clone(built, tmp_path / "repo")
    with open(repo / "stages" / "compare.py", "a") as f:
        f.write("\n# a compare-only change\n")
    assert ran_stages(sh(["dvc", "repro"], repo)) == ["compare"]  # the same student chosen
    method = chosen_student(repo)["method"]
    stage = "train_student@42" if method == "student" else f"distill@{method}-42"
    assert ran_stages(sh(["dvc", "repro", "-f", "-s", stage], repo)) == [stage]
    assert ran_stages(sh(["dvc", "repro"], repo)) == ["compare", "export"]  # a new model file


def test_a_code_change_reruns_the_stages_that_import_it(built, tmp_path):
    repo = clone(built, tmp_path / "repo")
    for launcher in ("launch.py", "warm.py"):  # starts stages, computes nothing: reruns nothing
        append(repo / "src" / "kdpipe" / "ops" / launcher, "\n# a launcher-only change\n")
    append(repo / "src" / "kdpipe" / "analysis" / "report.py", "\n# a report-only change\n")
    append(repo / "stages" / "distill.py", "\n# a distill-only change\n")
    assert stale_stages(repo) == ["compare", "distill@cosine-42", "distill@hint-42",
                                  "distill@kd-42"]


def test_a_method_module_change_reruns_that_method_and_check_params(built, tmp_path):
    repo = clone(built, tmp_path / "repo")
    append(repo / "src" / "kdpipe" / "learn" / "methods" / "hint.py", "\n# a hint-only change\n")
    append(repo / "src" / "kdpipe" / "learn" / "methods" / "dkd.py", "\n# not a listed method\n")
    assert stale_stages(repo) == ["check_params", "distill@hint-42"]


def append(path, text: str) -> None:
    """Append to a file that must exist (a renamed module must not pass as a new file)."""
    assert path.is_file(), path
    with open(path, "a") as f:
        f.write(text)


@pytest.mark.parametrize("typo, key", [
    ({"distill": {"methds": ["kd"]}}, "distill.methds"),
    ({"data": {"augmnt": True}}, "data.augmnt"),
    # a method's section is checked by its own module, in check_params, before any method runs
    ({"distill": {"kd": {"temprature": 2}}}, "distill.kd.temprature"),
])
def test_a_key_no_stage_reads_is_still_validated(built, tmp_path, typo, key):
    repo = clone(built, tmp_path / "repo")
    edit_params(repo, typo)
    done = subprocess.run(["dvc", "repro"], cwd=repo, capture_output=True, text=True,
                          env=clean_env())
    assert done.returncode != 0
    assert ran_stages(done.stdout) == ["check_params"]
    assert f"error: {key}: unknown key" in done.stderr + done.stdout
