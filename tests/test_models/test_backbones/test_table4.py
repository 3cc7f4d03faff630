"""Paper Table 4: parameters and GFLOPs of the ImageNet classifiers, plain and with CBAM.

The classifier is the backbone, global average pooling and a 1000-way fc. GFLOPs are counted with
mmengine's FlopAnalyzer at 224x224 as multiply-accumulates of the conv and linear layers (BN not
counted) with caffe-style strides (stride on the first 1x1 conv, as in the original ResNet, whose
FLOP figures the paper quotes): with this convention every figure matches the table.
"""
import pytest
import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer

from cbam_mmdet.models import CBAMResNet, CBAMResNeXt
from mmdet.models.backbones import ResNet, ResNeXt

# name: (plain builder, CBAM builder, kwargs, (plain params M, GFLOPs), (CBAM params M, GFLOPs))
TABLE4 = {
    'ResNet18': (ResNet, CBAMResNet, dict(depth=18), (11.69, 1.814), (11.78, 1.815)),
    'ResNet34': (ResNet, CBAMResNet, dict(depth=34), (21.80, 3.664), (21.96, 3.665)),
    'ResNet50': (ResNet, CBAMResNet, dict(depth=50), (25.56, 3.858), (28.09, 3.864)),
    'ResNet101': (ResNet, CBAMResNet, dict(depth=101), (44.55, 7.570), (49.33, 7.581)),
    'ResNeXt50-32x4d': (ResNeXt, CBAMResNeXt, dict(depth=50, groups=32, base_width=4),
                        (25.03, 3.768), (27.56, 3.774)),
    'ResNeXt101-32x4d': (ResNeXt, CBAMResNeXt, dict(depth=101, groups=32, base_width=4),
                         (44.18, 7.508), (48.96, 7.519)),
}


class ImageNetClassifier(nn.Module):

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.feat_dim, 1000)

    def forward(self, x):
        return self.fc(self.backbone(x)[-1].mean((2, 3)))


def params_and_gflops(backbone_type, kwargs):
    model = ImageNetClassifier(backbone_type(style='caffe', out_indices=(3, ), **kwargs)).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    analyzer = FlopAnalyzer(model, (torch.rand(1, 3, 224, 224), ))
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    by_op = analyzer.by_operator()
    return params, (by_op['conv'] + by_op['linear']) / 1e9


@pytest.mark.parametrize('name', list(TABLE4))
def test_params_and_gflops_match_paper_table4(name):
    plain_type, cbam_type, kwargs, plain_paper, cbam_paper = TABLE4[name]
    for backbone_type, (paper_params, paper_gflops) in [(plain_type, plain_paper),
                                                        (cbam_type, cbam_paper)]:
        params, gflops = params_and_gflops(backbone_type, kwargs)
        assert round(params, 2) == paper_params, f'{backbone_type.__name__} params {params:.3f}M'
        assert round(gflops, 3) == paper_gflops, f'{backbone_type.__name__} {gflops:.4f} GFLOPs'
