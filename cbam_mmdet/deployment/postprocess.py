"""mmdet's dense-head post-processing (score filter, top-k, decoding, NMS) in exportable ops.

mmdet runs ``BaseDenseHead._predict_by_feat_single`` image by image, with Python branches on the
data (``if not valid_mask.all()``) and mmcv's C++ ``nms``, which ``torch.export`` cannot trace.
The functions here compute the same detections for a whole batch at once with fixed-shape
tensor ops, ``nonzero`` for the data-dependent selections, and torchvision's ``nms`` (ONNX
``NonMaxSuppression``):

* per level and image: scores above ``score_thr``, the ``nms_pre`` best (score, prior, class)
  pairs, as ``filter_scores_and_topk``;
* box decoding with the head's own ``bbox_coder``, clipped to the image, then mmdet's
  ``min_bbox_size`` filter;
* class-wise NMS as mmcv's ``batched_nms`` below its ``split_thr``: every box shifted by
  ``group * (max coordinate + 1)``, one NMS over all, with the group the (image, class) pair;
* the ``max_per_img`` best detections of each image;
* for two-stage detectors, the RPN's proposals the same way (NMS per level), and the box head's
  class-specific boxes as mmdet's ``multiclass_nms``.
"""
from typing import List, Sequence, Tuple

import torch
from torch import Tensor
from torchvision.ops import nms

from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder
from mmdet.models.task_modules.coders.delta_xywh_bbox_coder import delta2bbox

# ``DeltaXYWHBBoxCoder.decode``'s default, which mmdet's heads use.
WH_RATIO_CLIP = 16 / 1000


def decode_boxes(bbox_coder: DeltaXYWHBBoxCoder, priors: Tensor, deltas: Tensor,
                 max_shape) -> Tensor:
    """``bbox_coder.decode(priors, deltas, max_shape)`` on (N, 4) inputs, as mmdet's ``predict``
    runs it: ``delta2bbox``. (Under ``torch.onnx.export``, ``decode`` takes a branch that imports
    mmdet 2.x's ``mmdet.core``, which mmdet 3 no longer has.)"""
    if type(bbox_coder) is not DeltaXYWHBBoxCoder:
        raise TypeError(f'only DeltaXYWHBBoxCoder boxes are decoded, not '
                        f'{type(bbox_coder).__name__}')
    return delta2bbox(priors, deltas, bbox_coder.means, bbox_coder.stds, max_shape,
                      WH_RATIO_CLIP, bbox_coder.clip_border, bbox_coder.add_ctr_clamp,
                      bbox_coder.ctr_clamp)


def top_candidates(scores: Tensor, score_thr: float, nms_pre: int) -> Tuple[Tensor, Tensor]:
    """The ``nms_pre`` best scores above ``score_thr`` of each image (``filter_scores_and_topk``).

    Args:
        scores (Tensor): (B, P, C) class scores of P priors.
        score_thr (float): Scores must exceed it.
        nms_pre (int): Candidates kept per image (all when -1 or more than P * C).

    Returns:
        tuple: scores (B, K), with -1 for pairs at or below the threshold, and the flat indices
        ``prior * C + class`` (B, K) of the pairs.
    """
    batch, priors, classes = scores.shape
    flat = scores.reshape(batch, priors * classes)
    masked = torch.where(flat > score_thr, flat, torch.full_like(flat, -1.0))
    k = priors * classes if nms_pre < 0 else min(nms_pre, priors * classes)
    return masked.topk(k, dim=1)


def gather_rows(values: Tensor, index: Tensor) -> Tensor:
    """``values[b, index[b, k]]``: (B, N, D) and (B, K) -> (B, K, D)."""
    return values.gather(1, index[..., None].expand(-1, -1, values.shape[-1]))


def class_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each group (mmcv ``batched_nms``' coordinate offsets), best first.

    Args:
        boxes (Tensor): (M, 4) xyxy boxes.
        scores (Tensor): (M,) scores.
        groups (Tensor): (M,) integer group of each box; boxes of different groups never
            suppress each other.
        iou_threshold (float): A box is dropped when its IoU with a better one exceeds it.

    Returns:
        Tensor: indices of the kept boxes, in decreasing score order.
    """
    # The maximum over the boxes and 0 (for an empty selection: no box, no offset).
    max_coordinate = torch.cat([boxes.flatten(), boxes.new_zeros(1)]).max()
    offsets = groups.to(boxes) * (max_coordinate + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def rank_within_image(batch_index: Tensor, num_images: int) -> Tensor:
    """Position of each entry among the earlier entries of its image: (M,) -> (M,)."""
    images = torch.arange(num_images, device=batch_index.device)
    one_hot = (batch_index[:, None] == images[None]).long()  # (M, B)
    return (one_hot.cumsum(0) * one_hot).sum(1) - 1


def select_detections(boxes: Tensor, scores: Tensor, labels: Tensor, batch_index: Tensor,
                      valid: Tensor, groups: Tensor, num_groups: int, num_images: int,
                      iou_threshold: float, max_per_img: int) -> List[Tensor]:
    """The valid candidates, NMS within each (image, group), the best ``max_per_img`` per image.

    Args:
        boxes (Tensor): (N, 4) xyxy candidates of all images.
        scores, labels, batch_index, valid (Tensor): (N,) each.
        groups (Tensor): (N,) group within the image, in [0, num_groups): NMS runs per group.
        num_groups (int): Groups per image.
        num_images (int): Images in the batch.
        iou_threshold (float): NMS IoU threshold.
        max_per_img (int): Detections kept per image.

    Returns:
        list[Tensor]: boxes (M, 4), scores (M,), labels (M,), batch_index (M,), image by image,
        each image's best first.
    """
    chosen = valid.nonzero()[:, 0]
    boxes, scores = boxes[chosen], scores[chosen]
    labels, batch_index = labels[chosen], batch_index[chosen]
    keep = class_nms(boxes, scores, batch_index * num_groups + groups[chosen], iou_threshold)
    keep = keep[rank_within_image(batch_index[keep], num_images) < max_per_img]
    # Image by image, each image's detections still best first (the sort key is exact).
    position = torch.arange(keep.shape[0], device=keep.device)
    keep = keep[torch.argsort(batch_index[keep] * (keep.shape[0] + 1) + position)]
    return [boxes[keep], scores[keep], labels[keep], batch_index[keep]]


def dense_detections(mlvl_scores: Sequence[Tensor], mlvl_deltas: Sequence[Tensor],
                     mlvl_priors: Sequence[Tensor], bbox_coder, image_shape: Tuple[int, int],
                     test_cfg, nms_per_level: bool = False) -> List[Tensor]:
    """Detections of a batch from per-level class scores and box deltas of a dense head.

    Args:
        mlvl_scores (Sequence[Tensor]): Per level (B, P_l, C) scores (background removed).
        mlvl_deltas (Sequence[Tensor]): Per level (B, P_l, 4) box regressions.
        mlvl_priors (Sequence[Tensor]): Per level (P_l, 4) priors (anchors), xyxy.
        bbox_coder (DeltaXYWHBBoxCoder): The head's box coder.
        image_shape (tuple): (H, W) of the input, where boxes are clipped.
        test_cfg: The head's ``test_cfg`` (score_thr, nms_pre, min_bbox_size, nms, max_per_img).
        nms_per_level (bool): NMS within each level (the RPN's) instead of each class.
            Defaults to False.

    Returns:
        list[Tensor]: ``select_detections``' outputs, boxes in input pixels.
    """
    batch, classes = mlvl_scores[0].shape[0], mlvl_scores[0].shape[-1]
    score_thr = test_cfg.get('score_thr', 0)
    scores, labels, levels, priors, deltas = [], [], [], [], []
    for level, (level_scores, level_deltas, level_priors) in enumerate(
            zip(mlvl_scores, mlvl_deltas, mlvl_priors)):
        top_scores, flat_index = top_candidates(level_scores, score_thr,
                                                test_cfg.get('nms_pre', -1))
        prior_index = torch.div(flat_index, classes, rounding_mode='floor')
        scores.append(top_scores)
        labels.append(flat_index - prior_index * classes)
        levels.append(torch.full_like(flat_index, level))
        priors.append(level_priors[prior_index])
        deltas.append(gather_rows(level_deltas, prior_index))
    scores, labels, levels = (torch.cat(t, 1).flatten() for t in (scores, labels, levels))
    boxes = decode_boxes(bbox_coder, torch.cat(priors, 1).reshape(-1, 4),
                         torch.cat(deltas, 1).reshape(-1, 4), image_shape)
    per_image = scores.shape[0] // batch
    batch_index = torch.div(torch.arange(scores.shape[0], device=scores.device), per_image,
                            rounding_mode='floor')
    valid = (scores > score_thr) & min_size_mask(boxes, test_cfg)
    groups, num_groups = (levels, len(mlvl_scores)) if nms_per_level else (labels, classes)
    return select_detections(boxes, scores, labels, batch_index, valid, groups, num_groups,
                             batch, test_cfg['nms']['iou_threshold'], test_cfg['max_per_img'])


def min_size_mask(boxes: Tensor, test_cfg) -> Tensor:
    """mmdet's ``min_bbox_size`` filter (width and height above it; none when it is < 0)."""
    min_size = test_cfg.get('min_bbox_size', -1)
    if min_size < 0:
        return torch.ones_like(boxes[:, 0], dtype=torch.bool)
    return (boxes[:, 2] - boxes[:, 0] > min_size) & (boxes[:, 3] - boxes[:, 1] > min_size)


def check_roi_count(rois: Tensor) -> None:
    """Bounds for the data-dependent RoI count, for the exporter: at least one (the RPN always
    proposes, its sigmoid scores being positive), which the early returns on no boxes
    (``delta2bbox``, convolutions) need to be traced; and below 2**32, without which the
    exporter writes sizes like C * 2**63 into int64 constants."""
    torch._check(rois.shape[0] > 0)
    torch._check(rois.shape[0] < 2**32)


def roi_detections(rois: Tensor, cls_score: Tensor, bbox_pred: Tensor, bbox_coder,
                   image_shape: Tuple[int, int], num_images: int, test_cfg) -> List[Tensor]:
    """Detections from a box head's outputs on RoIs (``BBoxHead.predict_by_feat``, with
    class-specific regression, softmax scores, then mmdet's ``multiclass_nms``).

    Args:
        rois (Tensor): (M, 5) RoIs: batch index, then xyxy.
        cls_score (Tensor): (M, C + 1) class logits, background last.
        bbox_pred (Tensor): (M, 4 * C) class-specific box regressions.
        bbox_coder (DeltaXYWHBBoxCoder): The box head's coder.
        image_shape (tuple): (H, W) of the input, where boxes are clipped.
        num_images (int): Images in the batch.
        test_cfg: The RoI head's ``test_cfg`` (score_thr, nms, max_per_img).

    Returns:
        list[Tensor]: ``select_detections``' outputs.
    """
    classes = cls_score.shape[1] - 1
    scores = cls_score.softmax(-1)[:, :-1].flatten()
    # Row r * C + c: RoI r, class c (``expand``, not ``repeat_interleave``: the exporter cannot
    # write the bounds the latter puts on a data-dependent size).
    num_rois = rois.shape[0]
    boxes = decode_boxes(bbox_coder, rois[:, None, 1:].expand(num_rois, classes, 4).reshape(-1, 4),
                         bbox_pred.reshape(-1, 4), image_shape)
    labels = torch.arange(classes, device=rois.device)[None].expand(num_rois, classes).flatten()
    batch_index = rois[:, 0].long()[:, None].expand(num_rois, classes).flatten()
    return select_detections(boxes, scores, labels, batch_index,
                             scores > test_cfg['score_thr'], labels, classes, num_images,
                             test_cfg['nms']['iou_threshold'], test_cfg['max_per_img'])
