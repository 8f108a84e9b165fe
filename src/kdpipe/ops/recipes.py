"""Named recipes: sets of params overrides (recipes/<name>.yaml) run as one DVC experiment.

    kdpipe recipe strong [--name NAME] [--queue] [--dry-run] [-- more `dvc exp run` arguments]

runs `dvc exp run -n strong -S key=value ...` with the recipe's overrides, checked first
against params.yaml's schema (a misspelt key fails before DVC starts). `--name` names the
experiment otherwise, so one recipe can carry several experiments (a sweep of methods on it).
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from kdpipe.core.config import Config
from kdpipe.core.errors import ConfigError
from kdpipe.core.schema import build

RECIPES = Path("recipes")


def overrides(name: str, params: Path = Path("params.yaml")) -> list[str]:
    """The recipe's `-S key=value` arguments, once params.yaml with them applied is valid."""
    path = RECIPES / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in RECIPES.glob("*.yaml"))) or "none"
        raise ConfigError(f"recipe {name!r}: no {path}; recipes here: {known}")
    recipe = yaml.safe_load(path.read_text()) or {}
    merged = yaml.safe_load(params.read_text())
    for key, value in recipe.items():
        node = merged
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    build(Config, merged, "")  # names the offending key, as check_params would
    # strings as they are, numbers, booleans and lists as JSON: Hydra's override grammar reads both
    return [f"{key}={value if isinstance(value, str) else json.dumps(value)}"
            for key, value in recipe.items()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recipe", help="a recipe under recipes/, e.g. strong")
    parser.add_argument("-n", "--name", help="the experiment's name (default: the recipe's)")
    parser.add_argument("--queue", action="store_true", help="queue it (dvc queue start)")
    parser.add_argument("--dry-run", action="store_true", help="print the command only")
    parser.add_argument("more", nargs="*", help="after --: more `dvc exp run` arguments")
    args = parser.parse_intermixed_args(argv)  # options may come after the recipe's name
    try:
        sets = overrides(args.recipe)
    except ConfigError as err:
        sys.exit(f"error: {err}")
    cmd = ["dvc", "exp", "run", "-n", args.name or args.recipe,
           *(["--queue"] if args.queue else []),
           *[arg for s in sets for arg in ("-S", s)], *args.more]
    print(shlex.join(cmd), flush=True)
    if not args.dry_run:
        sys.exit(subprocess.run(cmd).returncode)


if __name__ == "__main__":
    main()
