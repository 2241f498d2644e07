#!/bin/sh
# Data-parallel training on one machine: NPROC MPI ranks started by Open MPI's mpirun.
#
#   sh tools/dist_train.sh CONFIG NPROC [train.py args]
#
# Each rank gets OMP_NUM_THREADS = CPUs / NPROC (at least 1) unless OMP_NUM_THREADS
# is set; MPIRUN_ARGS adds mpirun options (for example '--hostfile hosts').
set -eu
if [ $# -lt 2 ]; then
    echo "usage: sh tools/dist_train.sh CONFIG NPROC [train.py args]" >&2
    exit 2
fi
CONFIG=$1
NPROC=$2
shift 2
case "$NPROC" in
    ''|*[!0-9]*|0) echo "dist_train.sh: NPROC must be a positive integer, got '$NPROC'" >&2; exit 2 ;;
esac
command -v mpirun >/dev/null 2>&1 ||
    { echo "dist_train.sh: mpirun not found: apt-get install openmpi-bin libopenmpi-dev" >&2; exit 2; }

HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python}
CPUS=$(nproc 2>/dev/null || echo 1)
THREADS=${OMP_NUM_THREADS:-$(( CPUS / NPROC > 0 ? CPUS / NPROC : 1 ))}
ROOT_ARGS=""
[ "$(id -u)" -eq 0 ] && ROOT_ARGS="--allow-run-as-root"

export PYTHONPATH="$HERE/..${PYTHONPATH:+:$PYTHONPATH}"
exec mpirun -np "$NPROC" $ROOT_ARGS --oversubscribe --bind-to none \
    -x OMP_NUM_THREADS="$THREADS" -x OPENBLAS_NUM_THREADS="$THREADS" -x PYTHONPATH \
    ${MPIRUN_ARGS:-} \
    "$PYTHON" -u "$HERE/train.py" "$CONFIG" --launcher mpi "$@"
