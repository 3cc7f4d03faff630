"""Property-based tests of CBAM over shapes, dtypes, options and extreme inputs (hypothesis).

Properties, for every drawn case: the output has the input's shape and dtype; the output and the
gradients of the input and of every parameter are finite; the attention maps the module applies
(``CBAM.attention``) lie within [0, 1].

Why [0, 1] and not (0, 1): the gates are sigmoids, which are strictly inside (0, 1) in exact
arithmetic, but in floating point sigmoid(z) rounds to exactly 1 once 1 - sigmoid(z) is below
half an ulp of 1 (z above about 17 in float32, 37 in float64, 6 in bfloat16) and underflows to 0
for very negative z. Inputs of +-1e4 drive the logits far beyond that, so only the closed
interval holds there. For moderate inputs (|x| <= 3) in float32 and float64 the logits stay
small and the maps are asserted strictly inside (0, 1).

BatchNorm in training mode needs more than one value per channel: the authors' spatial gate
(BN over an (N, 1, H, W) map) raises torch's own ValueError for a single 1x1 map (N = H = W = 1),
which is asserted as such. Deterministic: derandomized, no example database (nothing is written
to disk).
"""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cbam_mmdet.models import CBAM
from cbam_mmdet.models.layers.cbam import ARRANGEMENTS, AUTHORS_SPATIAL_NORM

SETTINGS = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
DTYPES = [torch.float32, torch.float64, torch.bfloat16]
INPUT_KINDS = ('moderate', 'plus_1e4', 'minus_1e4', 'mixed_1e4', 'constant', 'zeros')


@st.composite
def cases(draw):
    ratio = draw(st.sampled_from([1, 2, 4, 16]))
    channels = ratio * draw(st.sampled_from([1, 1, 2, 3]))  # often exactly the ratio
    return dict(
        batch=draw(st.sampled_from([1, 2])),
        channels=channels,
        height=draw(st.integers(1, 9)),
        width=draw(st.integers(1, 9)),
        dtype=draw(st.sampled_from(DTYPES)),
        kind=draw(st.sampled_from(INPUT_KINDS)),
        constant=draw(st.floats(-1e4, 1e4, allow_nan=False)),
        train=draw(st.booleans()),
        options=dict(
            ratio=ratio,
            arrangement=draw(st.sampled_from(ARRANGEMENTS)),
            pool_types=draw(st.sampled_from([('avg', 'max'), ('avg', ), ('max', )])),
            spatial_descriptor=draw(st.sampled_from(['pool', 'conv'])),
            kernel_size=draw(st.sampled_from([1, 3, 7])),
            spatial_norm_cfg=draw(st.sampled_from([AUTHORS_SPATIAL_NORM, None]))),
        seed=draw(st.integers(0, 2**16)))


def make_input(case) -> torch.Tensor:
    shape = (case['batch'], case['channels'], case['height'], case['width'])
    gen = torch.Generator().manual_seed(case['seed'])
    kind = case['kind']
    if kind == 'moderate':
        x = torch.rand(shape, generator=gen, dtype=torch.float64) * 6 - 3
    elif kind in ('plus_1e4', 'minus_1e4'):
        x = torch.full(shape, 1e4 if kind == 'plus_1e4' else -1e4, dtype=torch.float64)
        x += torch.rand(shape, generator=gen, dtype=torch.float64)  # not all ties
    elif kind == 'mixed_1e4':
        x = torch.randint(0, 2, shape, generator=gen).double() * 2e4 - 1e4
    elif kind == 'constant':
        x = torch.full(shape, case['constant'], dtype=torch.float64)
    else:
        x = torch.zeros(shape, dtype=torch.float64)
    return x.to(case['dtype']).requires_grad_()


def bf16_supported() -> bool:
    try:
        torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3, dtype=torch.bfloat16),
                                   torch.ones(1, 1, 3, 3, dtype=torch.bfloat16))
    except RuntimeError:
        return False
    return True


@SETTINGS
@given(case=cases())
def test_cbam_properties(case):
    if case['dtype'] is torch.bfloat16 and not bf16_supported():
        pytest.skip('no bfloat16 conv on this machine')
    torch.manual_seed(case['seed'])
    cbam = CBAM(case['channels'], **case['options'])
    cbam.init_weights()
    # A trained-looking spatial BN (the authors' init sets its weight to 0: a constant 0.5 map).
    for param in cbam.parameters():
        if param.dim() == 1 and torch.count_nonzero(param) == 0:
            torch.nn.init.uniform_(param, -1, 1)
    cbam.to(case['dtype']).train(case['train'])
    x = make_input(case)

    single_value_bn = (case['train'] and cbam.spatial_gate is not None
                       and cbam.spatial_gate.spatial.with_norm
                       and case['batch'] * case['height'] * case['width'] == 1)
    if single_value_bn:
        with pytest.raises(ValueError, match='Expected more than 1 value per channel'):
            cbam(x)
        return

    out = cbam(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all()
    out.float().mul(torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    assert torch.isfinite(x.grad).all()
    for name, param in cbam.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name

    with torch.no_grad():
        maps = [m for m in cbam.eval().attention(x.detach()) if m is not None]
    for att in maps:
        assert torch.isfinite(att).all()
        assert ((att >= 0) & (att <= 1)).all()
        if case['kind'] == 'moderate' and case['dtype'] is not torch.bfloat16:
            assert ((att > 0) & (att < 1)).all()


@SETTINGS
@given(batch=st.sampled_from([1, 2]), height=st.integers(1, 6), width=st.integers(1, 6),
       value=st.floats(-1e4, 1e4, allow_nan=False))
def test_constant_map_gives_a_uniform_spatial_map(batch, height, width, value):
    """A constant input has the same descriptor everywhere except at the zero-padded border,
    so with a 1x1 spatial conv the spatial map is uniform and the output stays constant
    per channel, up to float32 rounding: the convolution may sum in another order (vectorised
    or not) at different pixels, so equal inputs can differ in the last bit."""
    cbam = CBAM(8, ratio=2, kernel_size=1).eval()
    x = torch.full((batch, 8, height, width), value)
    out = cbam(x)
    _, spatial = cbam.attention(x)
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(spatial, spatial.flatten()[0].expand_as(spatial), rtol=4 * eps,
                               atol=0)
    flat = out.flatten(2)
    torch.testing.assert_close(flat, flat[..., :1].expand_as(flat), rtol=8 * eps, atol=0)
