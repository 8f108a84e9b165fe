"""The `kdpipe` command: one name for the project's tools, each with its own --help.

    kdpipe recipe strong [--queue]                         a named recipe (kdpipe.ops.recipes)
    kdpipe sweep [--all-commits] [--out reports/sweep]     the sweep report (kdpipe.analysis.sweep)
    kdpipe confirm [--seeds 47-51] [--queue | --report]    the sweep's choice on fresh seeds
    kdpipe cluster submit|sweep [...]                      Slurm fan-out (kdpipe.ops.cluster)
    kdpipe gpu-check --kit .whl --archive ... --out ...    the default pipeline on CUDA

`python -m kdpipe.analysis.sweep` and `python -m kdpipe.ops.cluster` work as before.
"""
from __future__ import annotations

import argparse
import importlib
import runpy
import sys
from pathlib import Path

# name -> (a module with main(argv), or a script of the checkout; what it does)
COMMANDS = {
    "recipe": ("kdpipe.ops.recipes", "run a named set of params overrides as a DVC experiment"),
    "sweep": ("kdpipe.analysis.sweep", "choose on validation over DVC experiments, test once"),
    "confirm": ("kdpipe.analysis.confirm", "train the sweep's choice and best baseline on fresh "
                "seeds; test the one gain"),
    "cluster": ("kdpipe.ops.cluster", "run the pipeline's stages or a sweep as Slurm jobs"),
    "gpu-check": ("benchmarks/gpu_check.py", "the default pipeline on CUDA, timed, as JSON"),
}
CHECKOUT = Path(__file__).resolve().parents[3]  # src/kdpipe/ops/command.py -> the repository


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="kdpipe", description="Knowledge-distillation pipeline tools (the pipeline "
        "itself runs with `dvc repro`).", epilog="\n".join(
            f"  {name:10} {what}" for name, (_, what) in COMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=COMMANDS, help="see below; `kdpipe <command> --help`")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    target = COMMANDS[args.command][0]
    sys.argv = [f"kdpipe {args.command}", *args.args]  # what each tool's --help names itself
    if target.endswith(".py"):
        script = CHECKOUT / target
        if not script.exists():
            sys.exit(f"error: kdpipe {args.command} runs {target} of a checkout of the project; "
                     f"{script} is not there (installed without the repository?)")
        runpy.run_path(str(script), run_name="__main__")
    else:
        importlib.import_module(target).main(args.args)


if __name__ == "__main__":
    main()
