"""Which process of a distributed run this is, known before the process group exists."""
import os

# Set by torch.distributed.run (RANK), slurm, MPI; LOCAL_RANK stands in when only it is set.
RANK_VARIABLES = ('RANK', 'SLURM_PROCID', 'OMPI_COMM_WORLD_RANK', 'LOCAL_RANK')


def is_first_process(launcher: str = 'none') -> bool:
    """Whether this is the process that checks inputs: always without a launcher, else rank 0.

    Read from the environment because the checks run before the process group exists.

    Args:
        launcher (str): mmengine's launcher ('none', 'pytorch', 'slurm', 'mpi').
    """
    if launcher in (None, 'none'):
        return True
    for name in RANK_VARIABLES:
        if os.environ.get(name) not in (None, ''):
            return int(os.environ[name]) == 0
    return True
