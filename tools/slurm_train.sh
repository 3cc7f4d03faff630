#!/usr/bin/env bash
# Training on a Slurm cluster, one task per GPU, through srun and mmengine's slurm launcher:
#   tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [tools/train.py options]
# GPUS (8), GPUS_PER_NODE (GPUS, at most 8) and CPUS_PER_TASK (5) size the job; SRUN_ARGS adds
# srun options (split on spaces); PYTHON picks the interpreter.
set -euo pipefail
source "$(dirname "$0")/slurm_common.sh"
require_arguments 4 "$#" "PARTITION JOB_NAME CONFIG WORK_DIR [tools/train.py options]"
slurm_run "$1" "$2" train.py "$3" --work-dir="$4" --launcher=slurm "${@:5}"
