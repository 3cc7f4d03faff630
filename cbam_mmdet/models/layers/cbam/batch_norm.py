"""BatchNorm bookkeeping that every CBAM implementation does as ``nn.BatchNorm2d.forward`` does."""
import math
from typing import Optional, Sequence

import torch.nn as nn


def check_batch_size(norm: Optional[nn.BatchNorm2d], shape: Sequence[int]) -> None:
    """Refuse a training batch with one value per channel, as ``F.batch_norm`` does."""
    if norm is not None and norm.training and math.prod(shape) == shape[1]:
        raise ValueError(f'Expected more than 1 value per channel when training, got input '
                         f'size {list(shape)}')


def count_batch(norm: Optional[nn.BatchNorm2d]) -> float:
    """Count a training batch in ``norm`` as ``nn.BatchNorm2d.forward`` does and return the
    momentum of its running statistics for this batch (0 without a norm or in evaluation)."""
    if norm is None or not norm.training:
        return 0.0
    norm.num_batches_tracked.add_(1)
    return 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum


def is_plain_batch_norm(norm: nn.Module) -> bool:
    """An ``nn.BatchNorm2d`` (not a subclass) with affine parameters and running statistics:
    the norm a fused implementation computes itself."""
    return type(norm) is nn.BatchNorm2d and norm.affine and norm.track_running_stats
