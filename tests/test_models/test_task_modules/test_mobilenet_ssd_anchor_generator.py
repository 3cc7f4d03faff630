import pytest
import torch

from mmdet.registry import TASK_UTILS

MOBILENET_SSD = dict(type='MobileNetSSDAnchorGenerator', strides=[16, 30, 60, 100, 150, 300],
                     ratios=[[2], [2, 3], [2, 3], [2, 3], [2, 3], [2, 3]],
                     min_sizes=[60, 105, 150, 195, 240, 285],
                     max_sizes=[None, 150, 195, 240, 285, 300])


def sizes(anchors):
    """(w, h) of each anchor, rounded."""
    return sorted((round(float(x2 - x1), 2), round(float(y2 - y1), 2))
                  for x1, y1, x2, y2 in anchors)


def test_mobilenet_ssd_anchors():
    generator = TASK_UTILS.build(MOBILENET_SSD)
    assert generator.num_base_priors == [3, 6, 6, 6, 6, 6]
    r2 = 2**0.5
    # conv11: size 60 at ratios 1, 1/2, 2 and no sqrt(min * max) anchor
    assert sizes(generator.base_anchors[0]) == sizes(
        [[0, 0, 60, 60], [0, 0, 60 * r2, 60 / r2], [0, 0, 60 / r2, 60 * r2]])
    # conv13: size 105 at ratios 1, 1/2, 2, 1/3, 3, and sqrt(105 * 150) at ratio 1
    extra = (105 * 150)**0.5
    r3 = 3**0.5
    assert sizes(generator.base_anchors[1]) == sizes(
        [[0, 0, 105, 105], [0, 0, extra, extra], [0, 0, 105 * r2, 105 / r2],
         [0, 0, 105 / r2, 105 * r2], [0, 0, 105 * r3, 105 / r3], [0, 0, 105 / r3, 105 * r3]])
    anchors = generator.grid_priors([(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)],
                                    device='cpu')
    assert [len(a) for a in anchors] == [19 * 19 * 3] + [s * s * 6 for s in (10, 5, 3, 2, 1)]


def test_levels_with_max_sizes_match_mmdets_generator():
    mine = TASK_UTILS.build(dict(MOBILENET_SSD, max_sizes=[90, 150, 195, 240, 285, 300]))
    mmdet = TASK_UTILS.build(dict(MOBILENET_SSD, type='SSDAnchorGenerator', scale_major=False,
                                  max_sizes=[90, 150, 195, 240, 285, 300]))
    for a, b in zip(mine.base_anchors, mmdet.base_anchors):
        assert torch.equal(a, b)


def test_scale_major_is_refused():
    with pytest.raises(ValueError, match='scale_major'):
        TASK_UTILS.build(dict(MOBILENET_SSD, scale_major=True))
