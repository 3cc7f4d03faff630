# Shared by tools/slurm_train.sh and tools/slurm_test.sh (sourced, not run).
# require_arguments COUNT GIVEN USAGE: exits with the usage unless at least COUNT were given.
require_arguments() {
    if [ "$2" -lt "$1" ]; then
        echo "usage: $0 $3" >&2
        exit 2
    fi
}

check_count() {
    if ! [[ $2 =~ ^[1-9][0-9]*$ ]]; then
        echo "$1 must be a positive integer, got '$2'" >&2
        exit 2
    fi
}

# slurm_run PARTITION JOB_NAME TOOL [TOOL ARGUMENTS...]: runs tools/TOOL in GPUS tasks under srun.
slurm_run() {
    local partition=$1 job_name=$2 tool=$3
    shift 3
    local tools_dir
    tools_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    local gpus=${GPUS:-8} cpus_per_task=${CPUS_PER_TASK:-5}
    check_count GPUS "$gpus"
    check_count CPUS_PER_TASK "$cpus_per_task"
    # A job smaller than a node asks for only the GPUs it uses.
    local gpus_per_node=${GPUS_PER_NODE:-$((gpus < 8 ? gpus : 8))}
    check_count GPUS_PER_NODE "$gpus_per_node"
    local srun_args=()
    # SRUN_ARGS holds extra srun options separated by spaces, as in mmdet's scripts.
    read -r -a srun_args <<< "${SRUN_ARGS:-}"
    # In a source checkout the plugin imports from the checkout; an installed copy
    # (cbam_mmdet/.mim/tools) has no package beside it and uses the installed one.
    if [ -d "$tools_dir/../cbam_mmdet" ]; then
        export PYTHONPATH="$(cd "$tools_dir/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
    fi
    exec srun -p "$partition" --job-name="$job_name" \
        --gres=gpu:"$gpus_per_node" --ntasks="$gpus" --ntasks-per-node="$gpus_per_node" \
        --cpus-per-task="$cpus_per_task" --kill-on-bad-exit=1 "${srun_args[@]}" \
        "${PYTHON:-python}" -u "$tools_dir/$tool" "$@"
}
