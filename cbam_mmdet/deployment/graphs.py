"""The networks ``tools/deployment/export_onnx.py`` exports: parts of an mmdet detector as
modules whose only input is the image batch the test pipeline makes.

Every graph takes ``image``: (B, 3, H, W) float32, the test pipeline's output (after resizing,
in the pipeline's channel order, 0..255), and applies the detector's data preprocessor in the
graph (channel flip, mean / std). H and W must be multiples of the preprocessor's
``pad_size_divisor``, so that no padding is needed.
"""
from typing import List, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from mmdet.models.dense_heads import SSDHead
from .postprocess import dense_detections


class InputNormalizer(nn.Module):
    """A detector's data preprocessor on an already batched, unpadded image tensor.

    Args:
        data_preprocessor (nn.Module): mmdet's ``DetDataPreprocessor`` (its ``mean``, ``std``
            and channel conversion are used).
    """

    def __init__(self, data_preprocessor: nn.Module) -> None:
        super().__init__()
        self.flip_channels = bool(data_preprocessor._channel_conversion)
        self.normalize = bool(data_preprocessor._enable_normalize)
        if self.normalize:
            self.register_buffer('mean', data_preprocessor.mean.detach().clone()[None])
            self.register_buffer('std', data_preprocessor.std.detach().clone()[None])

    def forward(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, 3, H, W) network input."""
        if self.flip_channels:
            image = image.flip(1)
        image = image.float()
        return (image - self.mean) / self.std if self.normalize else image


class BackboneGraph(nn.Module):
    """image -> the backbone's feature maps (one output per ``out_indices`` entry).

    Args:
        detector (nn.Module): An mmdet detector.
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.normalizer = InputNormalizer(detector.data_preprocessor)
        self.backbone = detector.backbone

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        return tuple(self.backbone(self.normalizer(image)))


class FeatureGraph(nn.Module):
    """image -> the neck's feature maps, then the RPN's objectness and box-delta maps.

    For a two-stage detector this is everything before the RoI stage: the proposals follow
    from the RPN maps with mmdet's ``RPNHead.predict_by_feat``.

    Args:
        detector (nn.Module): An mmdet two-stage detector (``extract_feat`` and ``rpn_head``).
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.normalizer = InputNormalizer(detector.data_preprocessor)
        self.detector = detector

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        features = self.detector.extract_feat(self.normalizer(image))
        objectness, deltas = self.detector.rpn_head(features)
        return (*features, *objectness, *deltas)


class SSDDetectionGraph(nn.Module):
    """image -> SSD detections, decoding and NMS included (``SSDHead`` and subclasses).

    Computes what ``detector.predict(..., rescale=False)`` returns (see ``postprocess.py``), for
    the input size given here: SSD's priors are laid out for it, so H and W are fixed, the batch
    is not.

    Args:
        detector (nn.Module): An mmdet ``SingleStageDetector`` with an ``SSDHead``.
        image_shape (tuple): (H, W) of the input.

    Outputs:
        boxes (M, 4) xyxy in input pixels, scores (M,), labels (M,) int64, batch_index (M,)
        int64: the detections of all images, image by image, best first.
    """

    def __init__(self, detector: nn.Module, image_shape: Tuple[int, int]) -> None:
        super().__init__()
        head = detector.bbox_head
        if not isinstance(head, SSDHead):
            raise TypeError(f'SSDDetectionGraph: needs an SSDHead, got {type(head).__name__}')
        self.normalizer = InputNormalizer(detector.data_preprocessor)
        self.detector = detector
        self.image_shape = tuple(image_shape)

    def forward(self, image: Tensor) -> List[Tensor]:
        head = self.detector.bbox_head
        cls_scores, bbox_preds = head(self.detector.extract_feat(self.normalizer(image)))
        priors = head.prior_generator.grid_priors([s.shape[-2:] for s in cls_scores],
                                                  dtype=image.dtype, device=image.device)
        batch = image.shape[0]
        # (B, A * (C + 1), H, W) -> (B, H * W * A, C + 1), mmdet's prior order; softmax, then the
        # background (last) column dropped.
        scores = [s.permute(0, 2, 3, 1).reshape(batch, -1, head.cls_out_channels).softmax(-1)
                  [..., :-1] for s in cls_scores]
        deltas = [d.permute(0, 2, 3, 1).reshape(batch, -1, 4) for d in bbox_preds]
        return dense_detections(scores, deltas, priors, head.bbox_coder, self.image_shape,
                                head.test_cfg)
