import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from cbam_mmdet.models import MobileNetV1
from mmdet.registry import MODELS


def test_mobilenet_ssd_sources_and_parameter_count():
    model = MODELS.build(dict(type='MobileNetV1'))
    model.init_weights()
    # conv0 + 13 depthwise-separable layers, each conv followed by BN (Howard et al., Table 1)
    assert sum(p.numel() for p in model.parameters()) == 3206976
    outs = model(torch.rand(1, 3, 300, 300))
    assert [tuple(o.shape) for o in outs] == [(1, 512, 19, 19), (1, 1024, 10, 10)]


def test_width_multiplier_and_out_indices():
    model = MobileNetV1(widen_factor=0.5, out_indices=(0, 5, 13))
    outs = model(torch.rand(2, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(2, 16, 32, 32), (2, 128, 8, 8), (2, 512, 2, 2)]


def test_frozen_stages_stay_frozen_in_train_mode():
    model = MobileNetV1(frozen_stages=2)
    model.train()
    for i, layer in enumerate(model.layers):
        frozen = i <= 2
        assert all(p.requires_grad != frozen for p in layer.parameters()), i
        assert all(m.training != frozen for m in layer.modules() if isinstance(m, _BatchNorm)), i


def test_norm_eval_keeps_statistics():
    model = MobileNetV1(norm_eval=True, out_indices=(3, ))
    model.train()
    assert all(not m.training for m in model.modules() if isinstance(m, _BatchNorm))
    before = model.conv1.depthwise_conv.bn.running_mean.clone()
    model(torch.rand(2, 3, 32, 32))
    assert torch.equal(model.conv1.depthwise_conv.bn.running_mean, before)
    model.eval()
    model.train()  # norm_eval survives a mode switch
    assert not model.conv0.bn.training


@pytest.mark.parametrize('kwargs,message', [(dict(out_indices=(14, )), 'out_indices'),
                                            (dict(out_indices=()), 'out_indices'),
                                            (dict(frozen_stages=14), 'frozen_stages')])
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MobileNetV1(**kwargs)
