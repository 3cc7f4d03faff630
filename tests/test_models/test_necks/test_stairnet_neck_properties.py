"""Property-based tests of StairNetNeck over input sizes, batch sizes, dtypes and values."""
from typing import List, NamedTuple, Tuple

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cbam_mmdet.models import CBAM
from cbam_mmdet.models.necks.stairnet_neck import smallest_last_source_side
from mmdet.models.necks import SSDNeck
from mmdet.registry import MODELS

SE = dict(type='CBAM', arrangement='channel', pool_types=('avg', ))
ATTENTIONS = {'none': None, 'se': SE, 'cbam': dict(type='CBAM')}
FEAT_CHANNELS = 16  # CBAM's default ratio: one hidden unit in the channel MLP
# The VGG16 and MobileNet layouts of test_stairnet_neck.py with channels / 32.
LAYOUTS = {
    'vgg': dict(in_channels=(16, 32), out_channels=(16, 32, 16, 8, 8, 8),
                level_strides=(2, 2, 1, 1), level_paddings=(1, 1, 0, 0), l2_norm_scale=20.),
    'mobilenet': dict(in_channels=(16, 32), out_channels=(16, 32, 16, 8, 8, 4),
                      level_strides=(2, 2, 2, 2), level_paddings=(1, 1, 1, 1),
                      l2_norm_scale=None, norm_cfg=dict(type='BN'), use_depthwise=True),
}
# Both backbones halve with rounding up from the first source to the last (VGG16's ceil-mode
# pool4, MobileNet's stride-2 conv). The VGG extras need a last source of at least 17
# (17 -> 9 -> 5 -> 3 -> 1, the last two convs unpadded), so a first one of at least 33;
# MobileNet's (stride 2, padding 1) take any side.
SMALLEST_FIRST_SIDE = {'vgg': 33, 'mobilenet': 1}
SETTINGS = settings(max_examples=20, deadline=None, derandomize=True, database=None)


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    # On maps of a few pixels a second intra-op thread only adds synchronisation, and on a busy
    # machine it waits for a core: single-threaded, this file runs many times faster.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Case(NamedTuple):
    dtype: torch.dtype
    batch: int
    extra_sides: Tuple[int, int]  # added to the layout's smallest first-source side
    training: bool
    values: Tuple[str, float]  # ('normal' | 'extreme', seed) or ('constant', value)


CASES = st.builds(
    Case,
    dtype=st.sampled_from([torch.float32, torch.float64]),
    batch=st.sampled_from([1, 2]),
    extra_sides=st.tuples(st.integers(0, 12), st.integers(0, 12)),
    training=st.booleans(),
    values=st.one_of(
        st.tuples(st.sampled_from(['normal', 'extreme']), st.integers(0, 2**16)),
        st.tuples(st.just('constant'),
                  st.one_of(st.sampled_from([0., 1e4, -1e4]),
                            st.floats(-1e4, 1e4, allow_nan=False)))))


def ssd_sides(first_side: int, layout: dict) -> List[int]:
    """Sides of SSD's six maps along one dimension (all extras' 3x3 convs)."""
    sides = [first_side, -(-first_side // 2)]
    for stride, padding in zip(layout['level_strides'], layout['level_paddings']):
        sides.append((sides[-1] + 2 * padding - 3) // stride + 1)
    return sides


def build_neck(layout: dict, attention, dtype: torch.dtype):
    neck = MODELS.build(dict(type='StairNetNeck', feat_channels=FEAT_CHANNELS,
                             attention=attention, **layout))
    neck.init_weights()
    for module in neck.attentions:
        if getattr(module, 'spatial_gate', None):  # init zeroes its BN weight: a constant map
            torch.nn.init.constant_(module.spatial_gate.spatial.norm.weight, 0.5)
    return neck.to(dtype)


def make_source(shape, dtype, values) -> torch.Tensor:
    kind, param = values
    if kind == 'constant':
        return torch.full(shape, param, dtype=dtype)
    generator = torch.Generator().manual_seed(int(param))
    source = torch.randn(shape, dtype=dtype, generator=generator)
    return source if kind == 'normal' else source.sign() * 1e4


@pytest.mark.parametrize('attention', ATTENTIONS)
@pytest.mark.parametrize('layout', LAYOUTS)
@SETTINGS
@example(case=Case(torch.float32, 1, (0, 0), True, ('constant', 0.)))  # smallest maps
@example(case=Case(torch.float64, 2, (0, 7), True, ('extreme', 0)))
@given(case=CASES)
def test_outputs_gradients_and_attention_maps_are_finite(layout, attention, case):
    torch.manual_seed(0)
    neck = build_neck(LAYOUTS[layout], ATTENTIONS[attention], case.dtype).train(case.training)
    first = [SMALLEST_FIRST_SIDE[layout] + extra for extra in case.extra_sides]
    sides = list(zip(*(ssd_sides(side, LAYOUTS[layout]) for side in first)))
    inputs = tuple(
        make_source((case.batch, channels, h, w), case.dtype, case.values).requires_grad_()
        for channels, (h, w) in zip(LAYOUTS[layout]['in_channels'], sides))
    attention_inputs = []
    for module in neck.modules():
        if isinstance(module, CBAM):
            module.register_forward_pre_hook(
                lambda module, args: attention_inputs.append((module, args[0].detach())))

    if case.training and case.batch == 1 and sides[-1] == (1, 1):
        # BN (laterals, extras, CBAM's spatial gate) cannot train on one value per channel;
        # torch's own error says so (the configs drop one-image batches): test inference.
        with pytest.raises(ValueError, match='Expected more than 1 value per channel'):
            neck(inputs)
        neck.eval()
        attention_inputs.clear()
    outs = neck(inputs)

    assert [tuple(out.shape) for out in outs] == [(case.batch, FEAT_CHANNELS, h, w)
                                                  for h, w in sides]
    for out in outs:
        assert out.dtype == case.dtype and torch.isfinite(out).all()
    names, params = zip(*neck.named_parameters())
    generator = torch.Generator().manual_seed(0)
    loss = sum((out * torch.randn(out.shape, dtype=case.dtype, generator=generator)).sum()
               for out in outs)
    grads = torch.autograd.grad(loss, inputs + params, allow_unused=True)
    assert all(grad is not None for grad in grads[:len(inputs)])
    for name, grad in zip(('inputs[0]', 'inputs[1]') + names, grads):
        assert grad is None or torch.isfinite(grad).all(), name

    assert len(attention_inputs) == (0 if attention == 'none' else len(outs))
    for module, x in attention_inputs:
        with torch.no_grad():
            maps = [m for m in module.attention(x) if m is not None]
        assert len(maps) == (1 if attention == 'se' else 2)
        for attention_map in maps:
            # Saturated sigmoids (inputs of 1e4) reach 0 and 1 exactly.
            assert torch.isfinite(attention_map).all()
            assert attention_map.min() >= 0 and attention_map.max() <= 1


@SETTINGS
@given(strides=st.lists(st.sampled_from([1, 2]), min_size=1, max_size=4),
       paddings=st.lists(st.sampled_from([0, 1]), min_size=4, max_size=4),
       last_kernel_size=st.sampled_from([1, 3, 4]))
def test_smallest_last_source_side_is_the_smallest_ssd_accepts(
        strides, paddings, last_kernel_size):
    paddings = paddings[:len(strides)]
    ssd = SSDNeck((4, ), (4, ) * (len(strides) + 1), strides, paddings, l2_norm_scale=None,
                  last_kernel_size=last_kernel_size)

    def accepts(side):
        try:
            ssd((torch.rand(1, 4, side, side), ))
        except RuntimeError as error:
            assert "Kernel size can't be greater than actual input size" in str(error)
            return False
        return True

    smallest = smallest_last_source_side(strides, paddings, last_kernel_size)
    assert accepts(smallest) and (smallest == 1 or not accepts(smallest - 1))


@pytest.mark.parametrize('last_side', [(16, 16), (19, 16), (1, 1)])
def test_too_small_a_last_source_is_named_with_the_fix(last_side):
    neck = build_neck(LAYOUTS['vgg'], None, torch.float32).eval()
    inputs = (torch.rand(1, 16, *(2 * side for side in last_side)), torch.rand(1, 32, *last_side))
    with pytest.raises(ValueError, match=r'last source is {}x{}, .* at least 17 .* larger input'
                       .format(*last_side)):
        neck(inputs)
