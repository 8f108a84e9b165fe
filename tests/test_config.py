import copy
import dataclasses

import pytest
import yaml

from kdpipe.core.config import ConfigError, load_config
from kdpipe.learn.methods import registry
from tests.conftest import ROOT

DEFAULTS = yaml.safe_load((ROOT / "params.yaml").read_text())


def load_with(tmp_path, edit):
    params = copy.deepcopy(DEFAULTS)
    edit(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    cfg = load_config(path)
    registry.check_all(cfg)  # what stage check_params adds: every method's section validated
    return cfg


def set_key(dotted, value):
    def edit(params):
        *parents, last = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[last] = value
    return edit


def test_committed_params_reproduce_the_tutorial():
    cfg = load_config(ROOT / "params.yaml")
    assert cfg.seed == 42 and cfg.device == "auto" and cfg.data.source == "cifar10"
    assert (cfg.teacher.epochs, cfg.teacher.lr, cfg.teacher.batch_size) == (10, 0.001, 128)
    assert (cfg.student.epochs, cfg.student.lr, cfg.student.batch_size) == (10, 0.001, 128)
    kd = registry.settings(cfg, "kd")
    assert (kd.temperature, kd.soft_target_weight, kd.ce_weight) == (2.0, 0.25, 0.75)
    assert cfg.data.augment is False
    assert cfg.distill.methods == ["kd", "cosine", "hint"]
    assert (cfg.student.schedule, cfg.student.warmup_epochs) == ("constant", 0)


def test_an_integer_is_valid_where_a_float_is_expected(tmp_path):
    cfg = load_with(tmp_path, set_key("distill.kd.temperature", 4))
    kd = registry.settings(cfg, "kd")
    assert kd.temperature == 4.0 and isinstance(kd.temperature, float)


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    def typo(params):
        params["distill"]["kd"]["temprature"] = params["distill"]["kd"].pop("temperature")
    with pytest.raises(ConfigError, match=r"distill\.kd\.temprature: unknown key "
                                          r"\(did you mean 'temperature'\?\)"):
        load_with(tmp_path, typo)


@pytest.mark.parametrize("key, value, allowed", [
    ("teacher.epochs", 0, "an integer >= 1"),
    ("student.lr", 0, "a number > 0"),
    ("student.lr", -0.1, "a number > 0"),
    ("distill.kd.temperature", 0, "a number > 0"),
    ("distill.hint.feature_weight", -1, "a number >= 0"),
    ("teacher.batch_size", 0, "an integer >= 1"),
    ("teacher.batch_size", 12.5, "an integer >= 1"),
    ("device", "tpu", "auto | cuda | cpu"),
    ("precision", "fp16", "auto | fp32 | bf16"),
    ("data.augment", "yes", "true or false"),
    ("data.limit_train", -5, "an integer >= 0"),
    ("student.epochs", True, "an integer >= 1"),
    ("student.schedule", "linear", "constant | cosine"),
    ("distill.methods", ["kd", "dkk"], "dkk has no section distill.dkk; the methods with a "
                                       "section are: "),
    ("distill.methods", [], "a non-empty list of distinct method names"),
    ("distill.methods", ["kd", "kd"], "a non-empty list of distinct method names"),
    ("distill.dkd.warmup_epochs", -1, "an integer >= 0"),
    ("distill.dist.gamma", -1, "a number >= 0"),
    ("distill.dist.temperature", 0, "a number > 0"),
])
def test_bad_values_name_the_key_the_value_and_what_is_allowed(tmp_path, key, value, allowed):
    with pytest.raises(ConfigError) as err:
        load_with(tmp_path, set_key(key, value))
    message = str(err.value)
    assert message.startswith(f"{key}={value!r}") and allowed in message


def test_a_warmup_as_long_as_training_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"^student: warmup_epochs \(10\) must be fewer than "
                                          r"epochs \(10\)"):
        load_with(tmp_path, set_key("student.warmup_epochs", 10))


@pytest.mark.parametrize("method, weights", [("dkd", ("alpha", "beta", "ce_weight")),
                                             ("dist", ("beta", "gamma", "ce_weight"))])
def test_a_method_with_every_weight_zero_is_rejected(tmp_path, method, weights):
    def zero(params):
        params["distill"][method].update(dict.fromkeys(weights, 0))
    with pytest.raises(ConfigError, match=rf"distill\.{method}: the weights are all 0 "
                                          rf"\({', '.join(weights)}\)"):
        load_with(tmp_path, zero)


def test_dist_loads_with_the_papers_cifar_values():
    dist = registry.settings(load_config(ROOT / "params.yaml"), "dist")
    assert (dist.beta, dist.gamma, dist.temperature, dist.ce_weight) == (2.0, 2.0, 4.0, 1.0)


def test_lskd_at_its_authors_settings_loads(tmp_path):
    """Sun et al. train with --base-temp 2 --kd-weight 9 and CE weight 0.1; params.yaml keeps
    0.9 and says to set `-S distill.lskd.soft_target_weight=9`, which writes an integer."""
    def authors(params):
        params["distill"]["lskd"] = {"temperature": 2, "soft_target_weight": 9, "ce_weight": 0.1}
    lskd = registry.settings(load_with(tmp_path, authors), "lskd")
    assert (lskd.temperature, lskd.soft_target_weight, lskd.ce_weight) == (2.0, 9.0, 0.1)
    assert "-S distill.lskd.soft_target_weight=9" in (ROOT / "params.yaml").read_text()


def test_every_method_has_a_params_section_an_objective_and_a_description():
    assert set(DEFAULTS["distill"]) - {"methods"} == set(registry.names())
    for name in registry.names():
        method = registry.method(name)
        assert dataclasses.is_dataclass(method.settings) and method.description
        assert set(method.needs) <= {"logits", "features"}
        assert method.needs or method.control  # only a control may read no teacher


def test_a_method_nobody_wrote_is_named_with_the_methods_there_are(tmp_path):
    def extra(params):
        params["distill"]["kdd"] = {"temperature": 2}
    with pytest.raises(ConfigError, match=r"^distill\.kdd: no such method; the methods are "
                                          r"cosine, dist, dkd, fm, hint, kd, lskd, tfkd"):
        load_with(tmp_path, extra)




def test_both_weights_zero_is_rejected(tmp_path):
    def zero(params):
        params["distill"]["cosine"] = {"hidden_weight": 0, "ce_weight": 0.0}
    with pytest.raises(ConfigError, match=r"distill\.cosine: the weights are all 0"):
        load_with(tmp_path, zero)


def test_missing_key_and_missing_section(tmp_path):
    with pytest.raises(ConfigError, match=r"teacher\.lr: missing; expected a number > 0"):
        load_with(tmp_path, lambda p: p["teacher"].pop("lr"))
    with pytest.raises(ConfigError, match=r"^mlflow: missing; expected a section"):
        load_with(tmp_path, lambda p: p.pop("mlflow"))


def test_unreadable_yaml_is_reported(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
