"""Stage `check_params`: validate the whole of params.yaml. It declares the whole file, so any
change, even to a key no other stage reads (a typo such as `distill.methds`), is checked at the
next `dvc repro`, failing with one line. Writes the validated params, defaults filled in (each
method's section validated by its own module), which teacher outputs the listed methods read
(stage teacher_targets caches those) and how students' views are mixed (data.mix_alpha only
with a data.mix, so the alpha of no mixing reruns no stage)."""
from kdpipe.core.config import Config, as_dict
from kdpipe.core.files import write_json
from kdpipe.core.paths import CHECKED_PARAMS, MIXING, TEACHER_NEEDS
from kdpipe.learn.methods import registry
from kdpipe.ops.stage import run_stage


def main(cfg: Config) -> None:
    checked = as_dict(cfg)
    del checked["distill"]["sections"]
    checked["distill"] |= registry.check_all(cfg)
    needs = registry.teacher_needs(cfg)
    write_json(CHECKED_PARAMS, checked)
    write_json(TEACHER_NEEDS, {"needs": needs})
    write_json(MIXING, cfg.data.mixing())


if __name__ == "__main__":
    run_stage(main, track=False)
