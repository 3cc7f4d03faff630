import subprocess
import sys

import pytest
import torch
from mmengine.runner import save_checkpoint
from torch.nn.modules.batchnorm import _BatchNorm

from cbam_mmdet.models import CBAM, CBAMBasicBlock, CBAMResNet
from cbam_mmdet.models.layers import record_choices
from mmdet.models.backbones import ResNet, ResNeXt
from mmdet.registry import MODELS


def cbam_modules(model):
    return [m for m in model.modules() if isinstance(m, CBAM)]


def num_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('depth,block_type,num_cbam,channels', [
    (18, CBAMBasicBlock, 8, (64, 128, 256, 512)),
    (34, CBAMBasicBlock, 16, (64, 128, 256, 512)),
    (50, None, 16, (256, 512, 1024, 2048)),
])
def test_cbam_in_every_block_and_output_shapes(depth, block_type, num_cbam, channels):
    model = MODELS.build(dict(type='CBAMResNet', depth=depth))
    model.init_weights()
    assert len(cbam_modules(model)) == num_cbam
    for block in model.blocks():
        if block_type is not None:
            assert isinstance(block, block_type)
        out_channels = (block.norm3 if hasattr(block, 'norm3_name') else block.norm2).num_features
        assert block.cbam.channel_gate.mlp[0].in_features == out_channels
    outs = model(torch.rand(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, c, 16 // 2**i, 24 // 2**i)
                                              for i, c in enumerate(channels)]


def test_builds_without_a_default_scope():
    """Scripts build backbones outside any config: the CBAM plugin must still be found."""
    code = ('import cbam_mmdet; from cbam_mmdet.models import CBAMResNet; '
            'print(len([m for m in CBAMResNet(depth=18).modules() if type(m).__name__ == "CBAM"]))')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '8'


def test_cbam_sits_after_last_norm_before_the_addition():
    """Fig. 3: a CBAM that zeroes its input leaves relu(shortcut) as the block's output."""
    for depth in (18, 50):
        model = CBAMResNet(depth=depth)
        model.eval()
        block = next(model.blocks())
        # A hook's return value replaces CBAM's output (hooks see the module's own call).
        block.cbam.register_forward_hook(lambda module, args, out: torch.zeros_like(out))
        x = torch.rand(1, block.conv1.in_channels, 8, 8)
        identity = x if block.downsample is None else block.downsample(x)
        torch.testing.assert_close(block(x), torch.relu(identity))


def test_plugin_form_equals_cbam_resnet():
    torch.manual_seed(0)
    ours = CBAMResNet(depth=50)
    ours.init_weights()
    ours.eval()
    plugin = ResNet(depth=50, plugins=[dict(cfg=dict(type='CBAM'), position='after_conv3')])
    assert list(plugin.state_dict()) == list(ours.state_dict())
    plugin.load_state_dict(ours.state_dict())
    plugin.eval()
    x = torch.rand(1, 3, 64, 64)
    for a, b in zip(ours(x), plugin(x)):
        torch.testing.assert_close(a, b)


def test_cbam_cfg_is_passed_through_and_stages_select():
    model = CBAMResNet(depth=50, cbam_cfg=dict(type='CBAM', ratio=8, kernel_size=3),
                       cbam_stages=(False, True, True, False))
    assert not hasattr(model.layer1[0], 'cbam') and not hasattr(model.layer4[0], 'cbam')
    assert model.layer2[0].cbam.channel_gate.mlp[0].out_features == 512 // 8
    assert model.layer3[0].cbam.spatial_gate.spatial.conv.kernel_size == (3, 3)
    assert cbam_modules(CBAMResNet(depth=18, cbam_cfg=None)) == []


def test_frozen_stages_freeze_their_cbam_and_norm_eval_covers_it():
    model = CBAMResNet(depth=50, frozen_stages=2, norm_eval=False)
    model.train()
    for name, param in model.named_parameters():
        frozen = name.startswith(('conv1', 'bn1', 'layer1', 'layer2'))
        assert param.requires_grad != frozen, name
    assert not model.layer2[0].cbam.spatial_gate.spatial.norm.training
    assert model.layer3[0].cbam.spatial_gate.spatial.norm.training
    model = CBAMResNet(depth=50, norm_eval=True)
    model.train()
    assert not any(m.training for m in model.modules() if isinstance(m, _BatchNorm))


@pytest.mark.parametrize('depth', [18, 50])
def test_with_cp_gives_the_same_gradients(depth):
    torch.manual_seed(0)
    plain = CBAMResNet(depth=depth, out_indices=(3, ), norm_eval=False)
    plain.init_weights()
    cp = CBAMResNet(depth=depth, out_indices=(3, ), norm_eval=False, with_cp=True)
    cp.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    grads = []
    for model in (plain, cp):
        model.zero_grad()
        model(x)[0].sum().backward()
        grads.append(model.layer1[0].cbam.channel_gate.mlp[0].weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize('norm_cfg,norm_type,spatial_type', [
    (dict(type='GN', num_groups=32, requires_grad=True), torch.nn.GroupNorm, torch.nn.BatchNorm2d),
    (dict(type='SyncBN', requires_grad=True), torch.nn.SyncBatchNorm, torch.nn.SyncBatchNorm),
])
def test_norm_cfg_variants(norm_cfg, norm_type, spatial_type):
    """CBAM's spatial norm is synchronised with a SyncBN backbone (the authors' momentum and
    eps kept) and stays the authors' BN with GN; the state-dict keys do not change."""
    model = CBAMResNet(depth=50, norm_cfg=norm_cfg)
    assert isinstance(model.layer1[0].norm3, norm_type)
    spatial = [block.cbam.spatial_gate.spatial.norm for block in model.blocks()]
    assert all(isinstance(norm, spatial_type) for norm in spatial)
    assert all((norm.momentum, norm.eps) == (0.01, 1e-5) for norm in spatial)
    cbam_keys = [key for key in model.state_dict() if '.cbam.' in key]
    assert cbam_keys == [key for key in CBAMResNet(depth=50).state_dict() if '.cbam.' in key]
    # Single-process SyncBN computes BN: the spatial gates run in the PyTorch-ops implementation.
    with record_choices() as choices:
        assert model(torch.rand(1, 3, 64, 64))[-1].shape == (1, 2048, 2, 2)
    assert len(choices) == 16 and all(choice.impl != 'eager' for choice in choices)


def test_spatial_norm_cfg_in_cbam_cfg_wins_over_sync_bn():
    model = CBAMResNet(depth=18, norm_cfg=dict(type='SyncBN'),
                       cbam_cfg=dict(type='CBAM', spatial_norm_cfg=dict(type='BN', eps=1e-3)))
    norm = model.layer1[0].cbam.spatial_gate.spatial.norm
    assert type(norm) is torch.nn.BatchNorm2d and norm.eps == 1e-3
    assert CBAMResNet(depth=18, norm_cfg=dict(type='SyncBN'), cbam_cfg=dict(
        type='CBAM', spatial_norm_cfg=None)).layer1[0].cbam.spatial_gate.spatial.with_norm is False


def test_dcn_and_extra_plugins():
    model = CBAMResNet(
        depth=50,
        dcn=dict(type='DCN', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, False, False, True),
        plugins=[dict(cfg=dict(type='ContextBlock', ratio=1. / 4), position='after_conv3',
                      stages=(False, False, True, True))])
    block = model.layer4[0]
    assert type(block.conv2).__name__ == 'DeformConv2dPack'
    # Extra plugins come first, CBAM last: nearest the shortcut addition as in Fig. 3.
    assert block.after_conv3_plugin_names == ['context_block', 'cbam']
    assert model(torch.rand(1, 3, 128, 128))[-1].shape == (1, 2048, 4, 4)


def test_basic_block_plugin_positions():
    model = CBAMResNet(depth=18, plugins=[dict(cfg=dict(type='CBAM', ratio=4, postfix='_c1'),
                                               position='after_conv1')])
    assert model.layer1[0].after_conv1_plugin_names == ['cbam_c1']
    assert model(torch.rand(1, 3, 64, 64))[-1].shape == (1, 512, 2, 2)
    with pytest.raises(ValueError, match='after_conv3'):
        CBAMResNet(depth=18, plugins=[dict(cfg=dict(type='CBAM'), position='after_conv3')])


def test_v1d_and_resnext_variants():
    v1d = MODELS.build(dict(type='CBAMResNetV1d', depth=50))
    assert v1d.deep_stem and v1d.avg_down and len(cbam_modules(v1d)) == 16
    assert v1d(torch.rand(1, 3, 64, 64))[0].shape == (1, 256, 16, 16)
    resnext = MODELS.build(dict(type='CBAMResNeXt', depth=50, groups=32, base_width=4))
    assert isinstance(resnext, ResNeXt)
    assert resnext(torch.rand(1, 3, 64, 64))[-1].shape == (1, 2048, 2, 2)


@pytest.mark.parametrize('kwargs,match', [
    (dict(depth=42), r'depth=42.*\[18, 34, 50, 101, 152\]'),
    (dict(depth=50, cbam_stages=(True, True)), 'cbam_stages'),
    (dict(depth=50, cbam_cfg=dict(type='CBAM', ratio=4096)), 'ratio'),
])
def test_invalid_backbone_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CBAMResNet(**kwargs)


def test_from_scratch_init_follows_the_authors():
    model = CBAMResNet(depth=18)
    model.init_weights()
    for block in model.blocks():
        assert torch.count_nonzero(block.cbam.spatial_gate.spatial.norm.weight) == 0
        assert torch.all(block.norm2.weight == 1)  # no zero-init of the residual's last BN
    conv = model.layer2[0].conv1.weight
    fan_out = conv.shape[0] * conv.shape[2] * conv.shape[3]
    assert abs(conv.std().item() - (2 / fan_out)**0.5) < 0.1 * (2 / fan_out)**0.5

    zero = CBAMResNet(depth=18, zero_init_residual=True)
    zero.init_weights()
    assert all(torch.count_nonzero(b.norm2.weight) == 0 for b in zero.blocks())


@pytest.fixture
def plain_resnet_checkpoint(tmp_path):
    """A plain ResNet-18 'ImageNet' checkpoint with non-trivial weights and statistics."""
    from authors_reference import randomize_
    plain = randomize_(ResNet(depth=18, norm_eval=False), seed=3)
    path = str(tmp_path / 'plain_r18.pth')
    save_checkpoint({'state_dict': plain.state_dict()}, path)
    return plain, path


@pytest.mark.parametrize('arrangement', ['channel_first', 'parallel'])
def test_start_from_parent_computes_the_plain_parent(plain_resnet_checkpoint, arrangement):
    plain, path = plain_resnet_checkpoint
    model = CBAMResNet(depth=18, start_from_parent=True, norm_eval=False,
                       cbam_cfg=dict(type='CBAM', arrangement=arrangement),
                       init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    model.init_weights()  # a second call must not rescale again
    x = torch.rand(2, 3, 64, 64)
    for mode in (False, True):
        plain.train(mode)
        model.train(mode)
        for ours, theirs in zip(model(x), plain(x)):
            # float32 rounding only: the fused BN + CBAM normalises as x * scale + shift from
            # float64 statistics, PyTorch's BN otherwise (float64: 2e-14 relative).
            torch.testing.assert_close(ours, theirs, rtol=1e-4,
                                       atol=1e-5 * theirs.abs().max().item())
    model(x)[-1].sum().backward()
    assert model.layer4[1].cbam.channel_gate.mlp[2].weight.grad.abs().sum() > 0


def test_without_start_from_parent_pretrained_features_are_attenuated(plain_resnet_checkpoint):
    """What the README says: CBAM's own init scales each residual branch by Mc * Ms < 0.5."""
    plain, path = plain_resnet_checkpoint
    model = CBAMResNet(depth=18, start_from_parent=False,
                       init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.warns(UserWarning, match='random init'):
        model.init_weights()
    model.eval()
    plain.eval()
    gains = []
    for block in model.blocks():
        block.cbam.register_forward_hook(
            lambda m, inp, out: gains.append((out.norm() / inp[0].norm()).item()))
    x = torch.rand(1, 3, 64, 64)
    ours, theirs = model(x)[-1], plain(x)[-1]
    assert all(0.0 < g < 0.5 for g in gains)
    assert (ours - theirs).norm() / theirs.norm() > 0.1


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_backbone_under_autocast_is_finite(dtype):
    model = CBAMResNet(depth=18, norm_eval=False)
    model.init_weights()
    x = torch.rand(2, 3, 64, 64)
    with torch.autocast('cpu', dtype=dtype):
        outs = model(x)
    assert all(torch.isfinite(o).all() for o in outs)
    sum(o.float().sum() for o in outs).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
