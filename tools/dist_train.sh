#!/usr/bin/env bash
# Distributed training through torch.distributed.run and mmengine:
#   tools/dist_train.sh CONFIG NUM_PROCESSES [tools/train.py options]
# One process per GPU (NCCL); on a machine without CUDA, NUM_PROCESSES CPU processes (gloo).
# NNODES, NODE_RANK, MASTER_ADDR, PORT set up multi-node runs; PYTHON picks the interpreter.
set -euo pipefail
CONFIG=$1
NUM_PROCESSES=$2
shift 2
exec "${PYTHON:-python}" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29500}" \
    --nproc_per_node="$NUM_PROCESSES" \
    "$(dirname "$0")/train.py" "$CONFIG" --launcher pytorch "$@"
