#!/bin/sh
# Data-parallel training under slurm: TASKS MPI ranks started by srun (PMIx).
#
#   [TASKS=N] [TASKS_PER_NODE=n] [CPUS_PER_TASK=c] [SRUN_ARGS=...] \
#       sh tools/slurm_train.sh PARTITION JOB_NAME CONFIG [train.py args]
#
# TASKS (default 1) ranks, CPUS_PER_TASK (default 1) CPUs and OpenMP/OpenBLAS
# threads each; SRUN_MPI (default pmix) is srun's --mpi plugin; SRUN_ARGS adds
# srun options.  A rank that fails takes the job down (--kill-on-bad-exit).
# mmrazor's GPUS=N [GPUS_PER_NODE=n] are read as TASKS and TASKS_PER_NODE when
# those are unset (dmcp's ranks run on CPUs).
set -eu
if [ $# -lt 3 ]; then
    echo "usage: sh tools/slurm_train.sh PARTITION JOB_NAME CONFIG [train.py args]" >&2
    exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
shift 3
positive() {    # NAME VALUE
    case $2 in
    '' | *[!0-9]* | 0*) echo "slurm_train.sh: $1 must be a positive integer, got '$2'" >&2; exit 2 ;;
    esac
}
# mmrazor's GPUS=N GPUS_PER_NODE=n: N ranks (on CPUs here), n to a node
if [ -z "${TASKS:-}" ] && [ -n "${GPUS:-}" ]; then
    positive GPUS "$GPUS"
    TASKS=$GPUS
    said="GPUS=$GPUS read as TASKS=$GPUS"
    if [ -z "${TASKS_PER_NODE:-}" ] && [ -n "${GPUS_PER_NODE:-}" ]; then
        positive GPUS_PER_NODE "$GPUS_PER_NODE"
        TASKS_PER_NODE=$GPUS_PER_NODE
        said="$said, GPUS_PER_NODE=$GPUS_PER_NODE as TASKS_PER_NODE=$GPUS_PER_NODE"
    fi
    echo "slurm_train.sh: $said (CPU ranks)" >&2
elif [ -n "${GPUS:-}${GPUS_PER_NODE:-}" ]; then
    if [ -n "${TASKS:-}" ]; then why="TASKS=$TASKS is set"; else why="GPUS is not set"; fi
    echo "slurm_train.sh: GPUS/GPUS_PER_NODE ignored ($why)" >&2
fi
TASKS=${TASKS:-1}
CPUS_PER_TASK=${CPUS_PER_TASK:-1}
TASKS_PER_NODE=${TASKS_PER_NODE:-}
command -v srun >/dev/null 2>&1 ||
    { echo "slurm_train.sh: srun not found: apt-get install slurm-wlm (or run on the cluster)" >&2; exit 2; }

HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python}
export PYTHONPATH="$HERE/..${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS="$CPUS_PER_TASK" OPENBLAS_NUM_THREADS="$CPUS_PER_TASK"

exec srun -p "$PARTITION" \
    --job-name="$JOB_NAME" \
    --ntasks="$TASKS" \
    ${TASKS_PER_NODE:+--ntasks-per-node="$TASKS_PER_NODE"} \
    --cpus-per-task="$CPUS_PER_TASK" \
    --mpi="${SRUN_MPI:-pmix}" \
    --kill-on-bad-exit=1 \
    ${SRUN_ARGS:-} \
    "$PYTHON" -u "$HERE/train.py" "$CONFIG" --launcher slurm "$@"
