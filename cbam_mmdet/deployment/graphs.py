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
from torchvision.ops import roi_align

from mmdet.models.dense_heads import SSDHead
from .postprocess import check_roi_count, dense_detections, roi_detections


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
    """image -> the neck's feature maps, then the dense head's class and box-delta maps.

    The dense head is the RPN of a two-stage detector (this is everything before the RoI stage:
    the proposals follow from its maps with ``RPNHead.predict_by_feat``), else the detector's
    ``bbox_head``.

    Args:
        detector (nn.Module): An mmdet detector with ``extract_feat`` and a dense head.
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.normalizer = InputNormalizer(detector.data_preprocessor)
        self.detector = detector
        self.head = getattr(detector, 'rpn_head', None) or detector.bbox_head

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        features = self.detector.extract_feat(self.normalizer(image))
        cls_maps, box_maps = self.head(features)
        return (*features, *cls_maps, *box_maps)


def dense_outputs(head: nn.Module, cls_scores: List[Tensor], bbox_preds: List[Tensor],
                  dtype: torch.dtype, device: torch.device):
    """A dense head's maps as per-level (B, P, C) scores and (B, P, 4) deltas, in mmdet's prior
    order, with the priors: softmax without the background (last) column, or sigmoid."""
    batch = cls_scores[0].shape[0]
    priors = head.prior_generator.grid_priors([s.shape[-2:] for s in cls_scores], dtype=dtype,
                                              device=device)
    scores = [s.permute(0, 2, 3, 1).reshape(batch, -1, head.cls_out_channels) for s in cls_scores]
    if head.use_sigmoid_cls:
        scores = [s.sigmoid() for s in scores]
    else:
        scores = [s.softmax(-1)[..., :-1] for s in scores]
    deltas = [d.permute(0, 2, 3, 1).reshape(batch, -1, 4) for d in bbox_preds]
    return scores, deltas, priors


class SSDDetectionGraph(nn.Module):
    """image -> SSD detections, decoding and NMS included (``SSDHead`` and subclasses).

    Computes what ``detector.predict(..., rescale=False)`` returns (see ``postprocess.py``).
    SSD's priors and StairNet's top-down path are laid out for one input size: export it with
    a fixed H and W.

    Args:
        detector (nn.Module): An mmdet ``SingleStageDetector`` with an ``SSDHead``.

    Outputs:
        boxes (M, 4) xyxy in input pixels, scores (M,), labels (M,) int64, batch_index (M,)
        int64: the detections of all images, image by image, best first.
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        head = detector.bbox_head
        if not isinstance(head, SSDHead):
            raise TypeError(f'SSDDetectionGraph: needs an SSDHead, got {type(head).__name__}')
        self.normalizer = InputNormalizer(detector.data_preprocessor)
        self.detector = detector

    def forward(self, image: Tensor) -> List[Tensor]:
        head = self.detector.bbox_head
        cls_scores, bbox_preds = head(self.detector.extract_feat(self.normalizer(image)))
        scores, deltas, priors = dense_outputs(head, cls_scores, bbox_preds, image.dtype,
                                               image.device)
        return dense_detections(scores, deltas, priors, head.bbox_coder, image.shape[-2:],
                                head.test_cfg)


def roi_features(extractor: nn.Module, feats: Tuple[Tensor, ...], rois: Tensor) -> Tensor:
    """mmdet's ``SingleRoIExtractor`` with torchvision's ``roi_align`` (ONNX ``RoiAlign``).

    mmcv's ``RoIAlign`` (average pooling) and torchvision's compute the same bilinear samples
    (``aligned=True``: the half-pixel shift); each RoI takes the level ``map_roi_levels``
    assigns it, selected from every level's pooling (fixed shapes, no per-level subsets).
    """
    levels = extractor.map_roi_levels(rois, len(feats)) if len(feats) > 1 else None
    out = None
    for level, (feat, layer) in enumerate(zip(feats, extractor.roi_layers)):
        pooled = roi_align(feat, rois, layer.output_size, layer.spatial_scale,
                           layer.sampling_ratio, layer.aligned)
        out = pooled if out is None else torch.where(
            (levels == level)[:, None, None, None], pooled, out)
    return out


class TwoStageDetectionGraph(nn.Module):
    """image -> Faster R-CNN detections: RPN proposals (NMS per level), RoIAlign, the box head,
    class-wise NMS, as ``detector.predict(..., rescale=False)``.

    Args:
        detector (nn.Module): An mmdet two-stage detector with an anchor RPN, a
            ``SingleRoIExtractor`` of mmcv ``RoIAlign`` layers (average pooling) and a box head
            with class-specific regression.

    Outputs: as ``SSDDetectionGraph``'s.
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.normalizer = InputNormalizer(detector.data_preprocessor)
        self.detector = detector

    def forward(self, image: Tensor) -> List[Tensor]:
        feats = self.detector.extract_feat(self.normalizer(image))
        rpn, roi_head = self.detector.rpn_head, self.detector.roi_head
        image_shape = image.shape[-2:]
        scores, deltas, priors = dense_outputs(rpn, *rpn(feats), image.dtype, image.device)
        boxes, _, _, batch_index = dense_detections(scores, deltas, priors, rpn.bbox_coder,
                                                    image_shape, rpn.test_cfg,
                                                    nms_per_level=True)
        rois = torch.cat([batch_index[:, None].to(boxes), boxes], 1)
        check_roi_count(rois)
        extractor = roi_head.bbox_roi_extractor
        roi_feats = roi_features(extractor, feats[:extractor.num_inputs], rois)
        if roi_head.with_shared_head:
            roi_feats = roi_head.shared_head(roi_feats)
        cls_score, bbox_pred = roi_head.bbox_head(roi_feats)
        return roi_detections(rois, cls_score, bbox_pred, roi_head.bbox_head.bbox_coder,
                              image_shape, image.shape[0], roi_head.test_cfg)
