#!/usr/bin/env bash
# Training on a Slurm cluster, one task per GPU, through srun and mmengine's slurm launcher:
#   tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [tools/train.py options]
# GPUS (8), GPUS_PER_NODE (GPUS, at most 8) and CPUS_PER_TASK (5) size the job; SRUN_ARGS adds srun options
# (split on spaces); PYTHON picks the interpreter.
set -euo pipefail
if [ "$#" -lt 4 ]; then
    echo "usage: $0 PARTITION JOB_NAME CONFIG WORK_DIR [tools/train.py options]" >&2
    exit 2
fi
source "$(dirname "$0")/slurm_common.sh"
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
shift 4
slurm_run "$PARTITION" "$JOB_NAME" train.py "$CONFIG" --work-dir="$WORK_DIR" --launcher=slurm "$@"
