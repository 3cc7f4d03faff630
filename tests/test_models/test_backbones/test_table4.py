"""Paper Table 4: parameters and GFLOPs of the ImageNet classifiers, plain and with CBAM.

Counted by ``cbam_mmdet.runtime.complexity`` (mmengine's FlopAnalyzer at 224x224, multiply-
accumulates of conv and linear layers, caffe-style strides): every figure matches the table to
the printed precision.
"""
import pytest

from cbam_mmdet.runtime.complexity import TABLE4, classifier_complexity, with_cbam


@pytest.mark.parametrize('name', list(TABLE4))
def test_params_and_gflops_match_paper_table4(name):
    backbone, plain_paper, cbam_paper = TABLE4[name]
    for cfg, (paper_params, paper_gflops) in [(backbone, plain_paper),
                                              (with_cbam(backbone), cbam_paper)]:
        params, flops = classifier_complexity(cfg)
        assert round(params / 1e6, 2) == paper_params, f'{cfg["type"]} params {params}'
        assert round(flops / 1e9, 3) == paper_gflops, f'{cfg["type"]} FLOPs {flops}'
