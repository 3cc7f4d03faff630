import itertools

import pytest
import torch
from torch import nn

from authors_reference import AuthorsCBAM, randomize_
from cbam_mmdet.models import CBAM, CBAMResNet
from mmdet.registry import MODELS

ALL_OPTIONS = [
    dict(pool_types=pools, spatial_descriptor=desc, kernel_size=k, spatial_norm_cfg=norm,
         arrangement=arr)
    for pools, desc, k, norm, arr in itertools.product(
        [('avg', ), ('max', ), ('avg', 'max')], ['pool', 'conv'], [3, 7],
        [dict(type='BN', momentum=0.01, eps=1e-5), None],
        ['channel_first', 'spatial_first', 'parallel', 'channel', 'spatial'])
]


def load_from_authors(cbam: CBAM, ref: AuthorsCBAM) -> None:
    state = ref.state_dict()
    cbam.load_state_dict({
        'channel_gate.mlp.0.weight': state['ChannelGate.mlp.1.weight'],
        'channel_gate.mlp.0.bias': state['ChannelGate.mlp.1.bias'],
        'channel_gate.mlp.2.weight': state['ChannelGate.mlp.3.weight'],
        'channel_gate.mlp.2.bias': state['ChannelGate.mlp.3.bias'],
        **{f'spatial_gate.spatial.{k}': v for k, v in state.items() if 'SpatialGate' in k
           for k in [k.split('spatial.', 1)[1]]},
    })


def test_registered_and_buildable_from_config():
    cbam = MODELS.build(dict(type='CBAM', in_channels=64, ratio=8))
    assert isinstance(cbam, CBAM)
    assert cbam.channel_gate.mlp[0].out_features == 8


def test_default_structure_is_the_authors():
    cbam = CBAM(256)
    assert cbam.arrangement == 'channel_first'
    assert cbam.channel_gate.pool_types == ('avg', 'max')
    assert [tuple(p.shape) for p in cbam.channel_gate.mlp.parameters()] == [
        (16, 256), (16, ), (256, 16), (256, )]
    conv, norm = cbam.spatial_gate.spatial.conv, cbam.spatial_gate.spatial.norm
    assert conv.kernel_size == (7, 7) and conv.padding == (3, 3)
    assert conv.in_channels == 2 and conv.bias is None
    assert isinstance(norm, nn.BatchNorm2d) and norm.momentum == 0.01 and norm.eps == 1e-5
    # Paper Table 2, 'avg & max, k=7': 2 * C * C/16 + C/16 + C + 2 * 49 + BN affine.
    assert sum(p.numel() for p in cbam.parameters()) == 2 * 256 * 16 + 16 + 256 + 98 + 2


@pytest.mark.parametrize('train', [True, False])
def test_matches_authors_reference(train):
    torch.manual_seed(0)
    ref = randomize_(AuthorsCBAM(64), seed=1)
    cbam = CBAM(64)
    load_from_authors(cbam, ref)
    ref.train(train)
    cbam.train(train)
    x = torch.randn(2, 64, 9, 11, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    out, out_ref = cbam(x), ref(x_ref)
    torch.testing.assert_close(out, out_ref, rtol=1e-6, atol=1e-6)
    out.pow(2).sum().backward()
    out_ref.pow(2).sum().backward()
    # Gradients reach ~20 here; the fused path sums in another order (float32 rounding).
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('options', ALL_OPTIONS, ids=lambda o: '-'.join(
    f'{v}' for v in o.values()))
def test_every_option_keeps_shape_and_backpropagates(options):
    cbam = CBAM(32, ratio=4, **options)
    cbam.init_weights()
    x = torch.randn(2, 32, 7, 5, requires_grad=True)
    out = cbam(x)
    assert out.shape == x.shape
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, param in cbam.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_gates_follow_the_arrangement():
    x = torch.rand(1, 16, 6, 6) + 0.1
    for arrangement, expected in [('channel', ('channel_gate', )), ('spatial', ('spatial_gate', )),
                                  ('channel_first', ('channel_gate', 'spatial_gate')),
                                  ('spatial_first', ('spatial_gate', 'channel_gate'))]:
        cbam = CBAM(16, ratio=4, arrangement=arrangement).eval()
        names = {id(m): n for n, m in cbam.named_children()}
        assert tuple(names[id(g)] for g in cbam.gates) == expected
        out = x
        for gate in cbam.gates:
            out = gate(out)
        torch.testing.assert_close(cbam(x), out)
    parallel = CBAM(16, ratio=4, arrangement='parallel').eval()
    att = torch.sigmoid(parallel.channel_gate.logits(x) + parallel.spatial_gate.logits(x))
    torch.testing.assert_close(parallel(x), x * att)


def test_single_pooling_is_squeeze_excitation():
    cbam = CBAM(16, ratio=4, pool_types=('avg', ), arrangement='channel').eval()
    x = torch.randn(3, 16, 5, 5)
    mlp = cbam.channel_gate.mlp
    expected = x * torch.sigmoid(mlp(x.mean((2, 3))))[:, :, None, None]
    torch.testing.assert_close(cbam(x), expected)
    assert CBAM(16, ratio=4, pool_types='max').channel_gate.pool_types == ('max', )


def test_learned_descriptor_and_no_norm_variant():
    cbam = CBAM(16, ratio=4, spatial_descriptor='conv', spatial_norm_cfg=None)
    assert cbam.spatial_gate.compress.weight.shape == (1, 16, 1, 1)
    assert cbam.spatial_gate.spatial.conv.in_channels == 1
    assert cbam.spatial_gate.spatial.conv.bias is not None  # Eq. 3: a conv with bias, no BN
    assert not cbam.spatial_gate.spatial.with_norm


def test_authors_init_starts_spatial_gate_at_one_half():
    cbam = CBAM(32, ratio=4)
    cbam.init_weights()
    assert torch.count_nonzero(cbam.spatial_gate.spatial.norm.weight) == 0
    x = torch.randn(2, 32, 6, 6)
    logits = cbam.spatial_gate.logits(x)
    torch.testing.assert_close(torch.sigmoid(logits), torch.full_like(logits, 0.5))


def test_init_without_spatial_norm_starts_no_gate_saturated():
    """Eq. 3 without BN (``spatial_norm_cfg=None``): every spatial gate starts at 0.5 in a whole
    backbone, as with the authors' BN, and its conv still learns."""
    model = CBAMResNet(depth=18, norm_eval=False, cbam_cfg=dict(
        type='CBAM', spatial_norm_cfg=None, kernel_size=3, arrangement='parallel'))
    model.init_weights()
    maps = []
    for block in model.blocks():
        block.cbam.register_forward_pre_hook(
            lambda module, args: maps.append(module.attention(args[0])[1]))
    model(torch.rand(2, 3, 64, 64))[-1].sum().backward()
    spatial = torch.cat([m.flatten() for m in maps])
    saturated = ((spatial < 0.01) | (spatial > 0.99)).float().mean()
    assert len(maps) == 8 and saturated == 0
    torch.testing.assert_close(spatial, torch.full_like(spatial, 0.5))
    assert all(block.cbam.spatial_gate.spatial.conv.weight.grad.abs().sum() > 0
               for block in model.blocks())


@pytest.mark.parametrize('arrangement,gain', [('channel_first', 0.25), ('spatial_first', 0.25),
                                              ('parallel', 0.5), ('channel', 0.5),
                                              ('spatial', 0.5)])
@pytest.mark.parametrize('norm', [dict(type='BN'), None])
def test_reset_to_constant_gain(arrangement, gain, norm):
    cbam = CBAM(32, ratio=4, arrangement=arrangement, spatial_norm_cfg=norm)
    assert cbam.reset_to_constant_gain() == gain
    x = torch.randn(2, 32, 5, 7)
    for mode in (True, False):
        torch.testing.assert_close(cbam.train(mode)(x), gain * x)
    cbam.train()(x).pow(2).sum().backward()
    zeroed = [p for p in cbam.parameters() if p.abs().sum() == 0]
    assert zeroed and all(p.grad is not None and p.grad.abs().sum() > 0 for p in zeroed
                          if p.dim() > 1), 'zeroed weights must still learn'


@pytest.mark.parametrize('kwargs,names', [
    (dict(in_channels=8, ratio=16), ['ratio', 'in_channels']),
    (dict(in_channels=0), ['in_channels']),
    (dict(in_channels=32, ratio=0), ['ratio']),
    (dict(in_channels=32, kernel_size=4), ['kernel_size', 'odd']),
    (dict(in_channels=32, kernel_size=-3), ['kernel_size']),
    (dict(in_channels=32, pool_types=('avg', 'lse')), ['pool_types', "'avg'"]),
    (dict(in_channels=32, pool_types=()), ['pool_types']),
    (dict(in_channels=32, spatial_descriptor='mean'), ['spatial_descriptor', "'conv'"]),
    (dict(in_channels=32, arrangement='sequential'), ['arrangement', "'parallel'"]),
])
def test_invalid_arguments_name_the_problem(kwargs, names):
    with pytest.raises(ValueError) as err:
        CBAM(**kwargs)
    for name in names:
        assert name in str(err.value)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_autocast_outputs_and_gradients_are_finite(dtype):
    cbam = CBAM(64)
    cbam.init_weights()
    x = torch.randn(2, 64, 12, 12, requires_grad=True)
    with torch.autocast('cpu', dtype=dtype):
        out = cbam(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.float().sum().backward()
    assert torch.isfinite(x.grad).all()


def test_channels_last_input():
    cbam = CBAM(32, ratio=4).eval()
    x = torch.randn(2, 32, 6, 8)
    torch.testing.assert_close(cbam(x.to(memory_format=torch.channels_last)), cbam(x))


@pytest.mark.parametrize('arrangement', ['channel_first', 'spatial_first', 'parallel', 'channel',
                                         'spatial'])
def test_attention_returns_the_maps_forward_applies(arrangement):
    cbam = CBAM(16, ratio=4, arrangement=arrangement)
    cbam.init_weights()
    cbam.eval()
    x = torch.randn(2, 16, 5, 6)
    channel, spatial = cbam.attention(x)
    assert (channel is None) == (arrangement == 'spatial')
    assert (spatial is None) == (arrangement == 'channel')
    if arrangement == 'parallel':
        expected = x * torch.sigmoid(torch.logit(channel) + torch.logit(spatial))
    else:
        expected = x * (1 if channel is None else channel) * (1 if spatial is None else spatial)
    torch.testing.assert_close(cbam(x), expected)
    for att, shape in [(channel, (2, 16, 1, 1)), (spatial, (2, 1, 5, 6))]:
        if att is not None:
            assert att.shape == shape and ((att > 0) & (att < 1)).all()
