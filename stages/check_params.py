"""Stage `check_params`: validate the whole of params.yaml. It declares the whole file, so any
change, even to a key no other stage reads (a typo such as `distill.methds`), is checked at the
next `dvc repro`, failing with one line. Writes the validated params, defaults filled in."""
from kdpipe.core.config import as_dict, load_config
from kdpipe.core.files import write_json
from kdpipe.core.paths import CHECKED_PARAMS
from kdpipe.ops.stage import run_stage


def main() -> None:
    write_json(CHECKED_PARAMS, as_dict(load_config()))


if __name__ == "__main__":
    run_stage(main, track=False)
