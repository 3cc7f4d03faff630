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
* the ``max_per_img`` best detections of each image.
"""
from typing import List, Sequence, Tuple

import torch
from torch import Tensor
from torchvision.ops import nms


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


def dense_detections(mlvl_scores: Sequence[Tensor], mlvl_deltas: Sequence[Tensor],
                     mlvl_priors: Sequence[Tensor], bbox_coder, image_shape: Tuple[int, int],
                     test_cfg) -> List[Tensor]:
    """Detections of a batch from per-level class scores and box deltas of a dense head.

    Args:
        mlvl_scores (Sequence[Tensor]): Per level (B, P_l, C) scores (background removed).
        mlvl_deltas (Sequence[Tensor]): Per level (B, P_l, 4) box regressions.
        mlvl_priors (Sequence[Tensor]): Per level (P_l, 4) priors (anchors), xyxy.
        bbox_coder: The head's box coder (``decode(priors, deltas, max_shape)``).
        image_shape (tuple): (H, W) of the input, where boxes are clipped.
        test_cfg: The head's ``test_cfg`` (score_thr, nms_pre, min_bbox_size, nms, max_per_img).

    Returns:
        list[Tensor]: boxes (M, 4) xyxy in input pixels, scores (M,), labels (M,) and
        batch_index (M,), sorted by image, then by decreasing score.
    """
    batch, classes = mlvl_scores[0].shape[0], mlvl_scores[0].shape[-1]
    scores, labels, priors, deltas = [], [], [], []
    for level_scores, level_deltas, level_priors in zip(mlvl_scores, mlvl_deltas, mlvl_priors):
        top_scores, flat_index = top_candidates(level_scores, test_cfg.get('score_thr', 0),
                                                test_cfg.get('nms_pre', -1))
        prior_index = torch.div(flat_index, classes, rounding_mode='floor')
        scores.append(top_scores)
        labels.append(flat_index - prior_index * classes)
        priors.append(level_priors[prior_index])
        deltas.append(gather_rows(level_deltas, prior_index))
    scores, labels = torch.cat(scores, 1), torch.cat(labels, 1)
    boxes = bbox_coder.decode(torch.cat(priors, 1).reshape(-1, 4),
                              torch.cat(deltas, 1).reshape(-1, 4), max_shape=image_shape)
    boxes = boxes.reshape(batch, -1, 4)
    valid = scores > test_cfg.get('score_thr', 0)
    min_size = test_cfg.get('min_bbox_size', -1)
    if min_size >= 0:
        valid = valid & (boxes[..., 2] - boxes[..., 0] > min_size) & (
            boxes[..., 3] - boxes[..., 1] > min_size)
    chosen = valid.flatten().nonzero()[:, 0]
    candidates = scores.shape[1]
    batch_index = torch.div(chosen, candidates, rounding_mode='floor')
    boxes, scores, labels = boxes.reshape(-1, 4)[chosen], scores.flatten()[chosen], \
        labels.flatten()[chosen]
    keep = class_nms(boxes, scores, batch_index * classes + labels,
                     test_cfg['nms']['iou_threshold'])
    keep = keep[rank_within_image(batch_index[keep], batch) < test_cfg['max_per_img']]
    # Image by image, each image's detections still best first (the sort key is exact).
    position = torch.arange(keep.shape[0], device=keep.device)
    keep = keep[torch.argsort(batch_index[keep] * (keep.shape[0] + 1) + position)]
    return [boxes[keep], scores[keep], labels[keep], batch_index[keep]]
