#!/usr/bin/env bash
# Build the kit of wheels that benchmarks/gpu_check.py installs on a GPU machine that has no
# network: DVC, MLflow (mlflow-skinny: the tracking client and model flavors, no UI) with the
# SQLite store's SQLAlchemy and Alembic, and every dependency of theirs that the machine's image
# lacks, as wheels for CPython 3.12 on x86-64 Linux. What the image already has (PyTorch, NumPy,
# SciPy, ... listed in gpu_image_packages.txt) stays behind; the kit must stay under 64 MiB.
#
#   bash benchmarks/gpu_kit.sh [kit folder, default .whl]    (needs python3.12 and PyPI)
#
# A cross-platform `pip download --only-binary=:all: --python-version 3.12` does not resolve
# (some dependencies ship only an sdist), so this resolves with a real CPython 3.12 and builds
# a wheel from each sdist. Binary wheels are this machine's (glibc 2.36): the GPU machine's glibc
# must be as new or newer.
set -euo pipefail
kit=${1:-.whl}
py=${PYTHON312:-python3.12}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$py" -m pip download -q --dest "$work/dl" "dvc>=3.50" "mlflow-skinny>=3.1" sqlalchemy alembic
for sdist in "$work"/dl/*.tar.gz "$work"/dl/*.zip; do
  [ -e "$sdist" ] || continue
  "$py" -m pip wheel -q --no-deps --wheel-dir "$work/dl" "$sdist"
  rm "$sdist"
done
mkdir -p "$kit"
for wheel in "$work"/dl/*.whl; do
  name=$(basename "$wheel" | cut -d- -f1 | tr '[:upper:]_.' '[:lower:]--')
  grep -qxF "$name" "$here/gpu_image_packages.txt" || cp "$wheel" "$kit/"
done
echo "kit: $(ls "$kit" | wc -l) wheels, $(du -sm "$kit" | cut -f1) MiB in $kit"
