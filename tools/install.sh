#!/usr/bin/env bash
# Set up dmcp on a fresh Debian machine: the system libraries it builds against,
# Fashion-MNIST, a virtual environment in .venv and the package (editable).
#   bash tools/install.sh          # to run dmcp
#   bash tools/install.sh --dist   # + Open MPI and mpi4py (tools/dist_train.sh, slurm)
#   bash tools/install.sh --test   # + everything the tests need (PyTorch as the reference, slurm)
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-}"
case "$MODE" in ""|--dist|--test) ;; *) echo "usage: bash tools/install.sh [--dist|--test]" >&2; exit 2;; esac

PKGS="build-essential pkg-config libopenblas-dev libopenblas-openmp-dev libyaml-dev libturbojpeg0-dev libpng-dev dataset-fashion-mnist"
[ "$MODE" = "--dist" ] && PKGS="$PKGS openmpi-bin libopenmpi-dev"
[ "$MODE" = "--test" ] && PKGS="$PKGS openmpi-bin libopenmpi-dev slurm-wlm munge"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
echo "installing Debian packages: $PKGS"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends $PKGS >/dev/null

[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip setuptools wheel
case "$MODE" in
    --dist) python -m pip install -q -e '.[dist,export]' ;;
    --test) python -m pip install -q -e '.[test]' ;;
    *) python -m pip install -q -e '.[export]' ;;
esac
python -c "import dmcp, dmcp._C; print('dmcp', dmcp.__version__, 'ready in .venv')"
