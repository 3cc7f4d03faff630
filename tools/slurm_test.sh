#!/usr/bin/env bash
# Testing on a Slurm cluster, one task per GPU, through srun and mmengine's slurm launcher:
#   tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [tools/test.py options]
# Environment as for tools/slurm_train.sh.
set -euo pipefail
source "$(dirname "$0")/slurm_common.sh"
require_arguments 4 "$#" "PARTITION JOB_NAME CONFIG CHECKPOINT [tools/test.py options]"
slurm_run "$1" "$2" test.py "$3" "$4" --launcher=slurm "${@:5}"
