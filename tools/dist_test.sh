#!/usr/bin/env bash
# Distributed testing through torch.distributed.run and mmengine:
#   tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCESSES [tools/test.py options]
# Environment as for tools/dist_train.sh.
set -euo pipefail
CONFIG=$1
CHECKPOINT=$2
NUM_PROCESSES=$3
shift 3
exec "${PYTHON:-python}" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29500}" \
    --nproc_per_node="$NUM_PROCESSES" \
    "$(dirname "$0")/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "$@"
