import pytest
import torch

from cbam_mmdet.models import CBAM, SizeMatchedConvTranspose2d
from cbam_mmdet.models.necks.stairnet_neck import upsampling_geometry
from mmdet.models.necks.ssd_neck import L2Norm
from mmdet.registry import MODELS

SE = dict(type='CBAM', arrangement='channel', pool_types=('avg', ))
# mmdet's SSD300 VGG16 neck and MobileNet-SSD's extras (reference facts 3 and 4)
VGG = dict(in_channels=(512, 1024), out_channels=(512, 1024, 512, 256, 256, 256),
           level_strides=(2, 2, 1, 1), level_paddings=(1, 1, 0, 0), l2_norm_scale=20.)
MOBILENET = dict(in_channels=(512, 1024), out_channels=(512, 1024, 512, 256, 256, 128),
                 level_strides=(2, 2, 2, 2), level_paddings=(1, 1, 1, 1), l2_norm_scale=None,
                 norm_cfg=dict(type='BN'), feat_channels=128, use_depthwise=True)


def build_neck(layout, **kwargs):
    return MODELS.build(dict(type='StairNetNeck', **dict(layout, **kwargs)))


@pytest.mark.parametrize('layout,source_sides,sides,channels', [
    (VGG, (38, 19), (38, 19, 10, 5, 3, 1), 256),
    (MOBILENET, (19, 10), (19, 10, 5, 3, 2, 1), 128),
])
def test_output_shapes_at_300(layout, source_sides, sides, channels):
    neck = build_neck(layout, attention=dict(type='CBAM')).eval()
    neck.init_weights()
    inputs = tuple(torch.rand(1, c, s, s) for c, s in zip(layout['in_channels'], source_sides))
    with torch.no_grad():
        outs = neck(inputs)
    assert [tuple(o.shape) for o in outs] == [(1, channels, s, s) for s in sides]
    assert sum(isinstance(m, CBAM) for m in neck.modules()) == 6


def test_any_input_size_ssd_accepts():
    # A narrow MobileNet layout on a 320x200 image: sides (20, 13), (10, 7), (5, 4), (3, 2),
    # (2, 1), (1, 1); the top-down path retraces them exactly.
    neck = build_neck(dict(MOBILENET, in_channels=(16, 32), out_channels=(16, 32, 16, 8, 8, 8)),
                      feat_channels=8)
    sides = [(20, 13), (10, 7), (5, 4), (3, 2), (2, 1), (1, 1)]
    outs = neck((torch.rand(2, 16, 20, 13), torch.rand(2, 32, 10, 7)))
    assert [tuple(o.shape) for o in outs] == [(2, 8, h, w) for h, w in sides]


def test_depthwise_variant_layers():
    neck = build_neck(MOBILENET)
    assert all(up.groups == 128 for up in neck.upsamples)
    assert all(lat.conv.kernel_size == (1, 1) and lat.conv.groups == 1 for lat in neck.laterals)
    assert all(p.depthwise_conv.conv.groups == 128 for p in neck.post_fusions)
    dense = build_neck(VGG)
    assert all(up.groups == 1 for up in dense.upsamples)
    assert all(p.conv.kernel_size == (3, 3) and p.conv.bias is None for p in dense.post_fusions)


@pytest.mark.parametrize('attention', [None, SE, dict(type='CBAM')])
@pytest.mark.parametrize('use_depthwise', [False, True])
def test_gradients_reach_every_parameter(attention, use_depthwise):
    torch.manual_seed(0)
    # A narrow copy of the VGG layout at 300x300 (sides 38, 19, 10, 5, 3, 1).
    neck = build_neck(dict(VGG, in_channels=(16, 32), out_channels=(16, 32, 16, 16, 16, 16)),
                      feat_channels=64, use_depthwise=use_depthwise, attention=attention)
    neck.init_weights()
    for cbam in neck.attentions:
        if getattr(cbam, 'spatial_gate', None):  # init zeroes its BN weight: the conv would get 0
            torch.nn.init.constant_(cbam.spatial_gate.spatial.norm.weight, 0.5)
    neck.train()
    inputs = (torch.rand(2, 16, 38, 38), torch.rand(2, 32, 19, 19))
    outs = neck(inputs)
    sum((o * torch.randn_like(o)).sum() for o in outs).backward()
    for name, param in neck.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    expected = 0 if attention is None else 6
    assert sum(isinstance(m, CBAM) for m in neck.modules()) == expected


def test_se_is_the_channel_gate_with_average_pooling():
    neck = build_neck(VGG, attention=SE)
    for attention in neck.attentions:
        assert attention.spatial_gate is None and attention.channel_gate.pool_types == ('avg', )
        # Linear(256, 16) + Linear(16, 256): Hu et al.'s SE block at r = 16
        assert sum(p.numel() for p in attention.parameters()) == 8464


def test_unknown_attention_type_is_named():
    with pytest.raises(KeyError, match=r"'SEBlock'.*dict\(type='CBAM'\)"):
        build_neck(VGG, attention=dict(type='SEBlock'))


@pytest.mark.parametrize('coarse,fine,geometry', [
    (1, 3, (1, 0, 0)), (3, 5, (2, 1, 0)), (5, 10, (2, 1, 1)), (10, 19, (2, 1, 0)),
    (19, 38, (2, 1, 1)), (1, 2, (2, 1, 1)), (2, 3, (2, 1, 0))])
def test_upsampling_geometry_matches_stairnet(coarse, fine, geometry):
    assert upsampling_geometry(coarse, fine) == geometry
    up = SizeMatchedConvTranspose2d(4, depthwise=False)
    assert up(torch.rand(1, 4, coarse, coarse + 1), (fine, 2 * coarse + 2)).shape[-2:] == (
        fine, 2 * coarse + 2)


def test_unreachable_size_is_refused():
    with pytest.raises(ValueError, match='side of 1 to 4'):
        upsampling_geometry(1, 4)


def test_l2norm_is_mmdets_with_a_finite_gradient_at_an_all_zero_pixel():
    neck = build_neck(dict(VGG, in_channels=(16, 32), out_channels=(16, 32, 16, 16, 16, 16)))
    neck.init_weights()
    ours = neck.ssd_neck.l2_norm
    assert torch.equal(ours.weight, torch.full((16, ), 20.))  # SSDNeck's init reaches it
    mmdet_l2_norm = L2Norm(16, 20.)
    mmdet_l2_norm.load_state_dict(ours.state_dict())
    x = torch.rand(2, 16, 5, 5)
    x[1, :, 2, 3] = 0  # e.g. a ReLU map that is off in every channel there
    torch.testing.assert_close(ours(x), mmdet_l2_norm(x))
    x.requires_grad_()
    (ours(x) * torch.randn(2, 16, 5, 5)).sum().backward()
    assert torch.isfinite(x.grad).all()
