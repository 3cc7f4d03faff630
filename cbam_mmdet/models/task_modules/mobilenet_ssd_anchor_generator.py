"""SSD anchors whose levels may go without the extra sqrt(min * max) anchor (MobileNet-SSD)."""
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from mmdet.models.task_modules.prior_generators import SSDAnchorGenerator
from mmdet.registry import TASK_UTILS


@TASK_UTILS.register_module()
class MobileNetSSDAnchorGenerator(SSDAnchorGenerator):
    """``SSDAnchorGenerator`` with explicit sizes, where ``max_sizes[k] = None`` drops level k's
    extra anchor of size sqrt(min_size * max_size).

    MobileNet-SSD's first source (conv11) has 3 anchors: size 60 at ratios 1, 1/2 and 2, with no
    max size, hence no extra anchor; its other levels have 6 (ratios 1, 1/2, 2, 1/3, 3 and the
    extra anchor). mmdet's generator always adds the extra anchor.

    Args:
        strides (Sequence[int]): Anchor strides per level.
        ratios (Sequence[Sequence[float]]): Aspect ratios per level besides 1 (each r adds 1/r
            and r).
        min_sizes (Sequence[float]): Anchor size at ratio 1 per level.
        max_sizes (Sequence[float or None]): Max size per level, or None for no extra anchor.
        **kwargs: ``SSDAnchorGenerator``'s other arguments; ``scale_major`` must be False (mmdet's
            SSD configs set it so), which puts the extra anchor in row 1 of each level.
    """

    def __init__(self, strides: Sequence[int], ratios: Sequence[Sequence[float]],
                 min_sizes: Sequence[float], max_sizes: Sequence[Optional[float]],
                 scale_major: bool = False, **kwargs) -> None:
        if scale_major:
            raise ValueError('MobileNetSSDAnchorGenerator: scale_major must be False (as in '
                             "mmdet's SSD configs), got True")
        if len(max_sizes) != len(min_sizes):
            raise ValueError(f'MobileNetSSDAnchorGenerator: one max size (or None) per min '
                             f'size; got {len(max_sizes)} max and {len(min_sizes)} min sizes')
        self.with_extra_anchor = [max_size is not None for max_size in max_sizes]
        # A level without max size is generated with max = min (an extra anchor equal to the
        # ratio-1 anchor), which gen_base_anchors then drops.
        super().__init__(
            strides, ratios, min_sizes=list(min_sizes),
            max_sizes=[min_size if max_size is None else max_size
                       for min_size, max_size in zip(min_sizes, max_sizes)],
            scale_major=False, **kwargs)

    def gen_base_anchors(self) -> List[Tensor]:
        """Base anchors per level: (num_anchors, 4) in xyxy around the level's center."""
        return [
            anchors if extra else torch.cat([anchors[:1], anchors[2:]])
            for anchors, extra in zip(super().gen_base_anchors(), self.with_extra_anchor)
        ]
