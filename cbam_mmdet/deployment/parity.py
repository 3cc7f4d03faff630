"""How far an exported graph's outputs are from PyTorch's: features and detections."""
from typing import Dict, List, Sequence

import numpy as np
from torch import Tensor

# The bars the exporter's check holds a graph to (docs/deployment.md).
FEATURE_RTOL = 1e-4
BOX_RTOL = 1e-3  # of the image's larger side
SCORE_ATOL = 1e-4


def relative_difference(actual: np.ndarray, expected: Tensor) -> float:
    """max |actual - expected| / max |expected| (the absolute difference when expected is 0)."""
    expected = expected.detach().cpu().double().numpy()
    if actual.shape != expected.shape:
        raise ValueError(f"shape {actual.shape} differs from PyTorch's {expected.shape}")
    if expected.size == 0:
        return 0.0
    scale = float(np.abs(expected).max()) or 1.0
    return float(np.abs(actual.astype(np.float64) - expected).max()) / scale


def detection_differences(outputs: Sequence[np.ndarray], expected: List,
                          image_side: int) -> Dict[str, float]:
    """Compare a detection graph's outputs with mmdet's ``predict`` results, image by image.

    Each of mmdet's detections is matched to an unused exported one of the same label whose
    score and box are within the bars (the closest box); the order is not compared, since
    runtimes may order equal scores differently.

    Args:
        outputs (Sequence[np.ndarray]): boxes (M, 4), scores (M,), labels (M,), batch_index (M,).
        expected (list): mmdet's ``DetDataSample``s, one per image, predicted with
            ``rescale=False``.
        image_side (int): The input's larger side: box differences are relative to it.

    Returns:
        dict: ``detections`` (mmdet's total), ``exported`` (the graph's total), ``unmatched``
        (mmdet's detections without a counterpart), ``box`` (largest corner difference of a
        match / ``image_side``) and ``score`` (largest score difference of a match).
    """
    boxes, scores, labels, batch_index = outputs
    result = dict(detections=0, exported=len(scores), unmatched=0, box=0.0, score=0.0)
    for image, sample in enumerate(expected):
        pred = sample.pred_instances
        mine = batch_index == image
        used = np.zeros(int(mine.sum()), bool)
        for box, score, label in zip(pred.bboxes.cpu().numpy(), pred.scores.cpu().numpy(),
                                     pred.labels.cpu().numpy()):
            result['detections'] += 1
            box_diff = np.abs(boxes[mine] - box).max(1) / image_side
            score_diff = np.abs(scores[mine] - score)
            fits = ((labels[mine] == label) & (box_diff <= BOX_RTOL) & (score_diff <= SCORE_ATOL)
                    & ~used)
            if not fits.any():
                result['unmatched'] += 1
                continue
            best = np.flatnonzero(fits)[box_diff[fits].argmin()]
            used[best] = True
            result['box'] = max(result['box'], float(box_diff[best]))
            result['score'] = max(result['score'], float(score_diff[best]))
    return result


def detections_match(diff: Dict[str, float]) -> bool:
    """Whether every detection of either side has its counterpart (``detection_differences``)."""
    return diff['unmatched'] == 0 and diff['exported'] == diff['detections']
