"""Parameter and FLOP counts with mmengine's FlopAnalyzer, next to the paper's figures.

FLOPs are multiply-accumulates (one fused multiply-add = one FLOP, mmengine's convention) of the
conv and linear layers; normalisation, activations, pooling and the attention's element-wise
products are not counted, which is how the paper's Table 4 figures come out (with caffe-style
strides, as in the original ResNet whose FLOPs the paper quotes).
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer
from mmengine.config import Config

from mmdet.registry import MODELS

COUNTED_OPERATORS = ('conv', 'linear')

# Paper Table 4: name -> (backbone config, (params M, GFLOPs) plain, (params M, GFLOPs) + CBAM).
# The CBAM variant is ``with_cbam(config)``.
TABLE4 = {
    'ResNet18': (dict(type='ResNet', depth=18), (11.69, 1.814), (11.78, 1.815)),
    'ResNet34': (dict(type='ResNet', depth=34), (21.80, 3.664), (21.96, 3.665)),
    'ResNet50': (dict(type='ResNet', depth=50), (25.56, 3.858), (28.09, 3.864)),
    'ResNet101': (dict(type='ResNet', depth=101), (44.55, 7.570), (49.33, 7.581)),
    'ResNeXt50 (32x4d)': (dict(type='ResNeXt', depth=50, groups=32, base_width=4),
                          (25.03, 3.768), (27.56, 3.774)),
    'ResNeXt101 (32x4d)': (dict(type='ResNeXt', depth=101, groups=32, base_width=4),
                           (44.18, 7.508), (48.96, 7.519)),
}


def with_cbam(backbone_cfg: dict) -> dict:
    """The CBAM twin of an mmdet ResNet / ResNeXt backbone config."""
    return dict(backbone_cfg, type='CBAM' + backbone_cfg['type'])


class ImageNetClassifier(nn.Module):
    """A backbone's last stage, global average pooling and a 1000-way fc (Table 4's networks)."""

    def __init__(self, backbone_cfg: dict):
        super().__init__()
        self.backbone = MODELS.build(dict(backbone_cfg, style='caffe', out_indices=(3, )))
        self.fc = nn.Linear(self.backbone.feat_dim, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(x)[-1].mean((2, 3)))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _analyzer(model: nn.Module, inputs: tuple) -> FlopAnalyzer:
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    return analyzer


def counted_flops(analyzer: FlopAnalyzer, module: str = '') -> float:
    """FLOPs of the conv and linear layers of ``module`` ('' for the whole model)."""
    by_op = analyzer.by_module_and_operator()[module]
    return float(sum(by_op.get(op, 0) for op in COUNTED_OPERATORS))


def classifier_complexity(backbone_cfg: dict) -> Tuple[int, float]:
    """(parameters, FLOPs at 224x224) of ``ImageNetClassifier(backbone_cfg)``."""
    model = ImageNetClassifier(backbone_cfg).eval()
    return count_params(model), counted_flops(_analyzer(model, (torch.rand(1, 3, 224, 224), )))


def input_size_at_test(cfg: Config) -> Tuple[int, int]:
    """(H, W) that the test pipeline's Resize produces at most, padded as the preprocessor pads."""
    pipeline = cfg.test_dataloader.dataset.pipeline
    resize = next((t for t in pipeline if t['type'] == 'Resize'), None)
    if resize is None:
        raise ValueError('the test pipeline has no Resize: no fixed test input size')
    width, height = resize['scale']
    divisor = cfg.model.get('data_preprocessor', {}).get('pad_size_divisor', 1)
    return (-(-height // divisor) * divisor, -(-width // divisor) * divisor)


class _TensorForward(nn.Module):
    """A detector's ``_forward`` (features, RPN, RoI head) as a one-tensor module, to trace."""

    def __init__(self, detector: nn.Module, data_samples: list):
        super().__init__()
        self.detector = detector
        self.data_samples = data_samples

    def forward(self, inputs: torch.Tensor):
        return self.detector._forward(inputs, self.data_samples)


def detector_complexity(cfg: Config, seed: int = 0) -> Dict[str, Optional[float]]:
    """Parameters and FLOPs of a detector config at its test input size.

    The weights are a seeded random initialisation (nothing is downloaded). ``features`` counts
    the backbone and neck, which do not depend on the image; ``total`` adds the RPN and the RoI
    head, whose cost grows with the number of proposals the random network keeps (``rois``).
    """
    from mmdet.structures import DetDataSample
    torch.manual_seed(seed)
    detector = MODELS.build(cfg.model).eval()
    height, width = input_size_at_test(cfg)
    sample = DetDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width),
                                         pad_shape=(height, width), batch_input_shape=(height,
                                                                                       width),
                                         scale_factor=(1.0, 1.0)))
    rois = []
    if hasattr(detector, 'roi_head'):  # ``_forward`` calls roi_head.forward: hooks do not fire
        roi_forward = detector.roi_head.forward

        def counting_forward(x, rpn_results_list, *args, **kwargs):
            rois.append(sum(len(r) for r in rpn_results_list))
            return roi_forward(x, rpn_results_list, *args, **kwargs)

        detector.roi_head.forward = counting_forward
    with torch.no_grad():
        analyzer = _analyzer(_TensorForward(detector, [sample]),
                             (torch.rand(1, 3, height, width) * 255, ))
        total = counted_flops(analyzer)
    modules = analyzer.by_module_and_operator()
    features = sum(counted_flops(analyzer, f'detector.{name}') for name in ('backbone', 'neck')
                   if f'detector.{name}' in modules)
    return dict(params=count_params(detector), input=f'{width}x{height}', features=features,
                total=total, rois=rois[-1] if rois else None)
