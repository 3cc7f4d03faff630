"""Save the random number generators' states in checkpoints, so a resumed run continues exactly."""
import random

import numpy as np
import torch
from mmengine.hooks import Hook

from mmdet.registry import HOOKS


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Store the main process's torch (CPU and CUDA), numpy and Python RNG states in every
    checkpoint and restore them on ``--resume``.

    mmengine re-seeds a resumed run from the config's seed, so the random draws after a resume
    (RPN/RoI sampling, dropout, ...) differ from those an uninterrupted run would have made. With
    this hook, a run resumed from iteration N draws the same numbers the uninterrupted run drew
    after iteration N. Data augmentation runs in dataloader workers, which mmengine seeds per
    worker from the config's seed and which replay the skipped batches on resume, so it matches
    too as long as ``num_workers >= 1`` (with ``num_workers=0`` the replay consumes the main
    process's numpy state again). Loading a checkpoint without ``--resume`` (``load_from``)
    leaves the generators alone.
    """
    priority = 'VERY_LOW'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint['random_state'] = dict(
            torch=torch.get_rng_state(),
            cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            numpy=np.random.get_state(),
            python=random.getstate())

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get('random_state')
        if not getattr(runner, '_resume', False) or state is None:
            return
        torch.set_rng_state(state['torch'])
        if state['cuda'] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state['cuda'])
        np.random.set_state(state['numpy'])
        random.setstate(state['python'])
