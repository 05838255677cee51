"""TF 'SAME' arithmetic: conv2d_same, subsample and the slim root pool against NumPy references."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from resnetkit.layers import conv2d_same, fixed_padding, max_pool2d_same, same_padding, subsample


def grid(h, w):
    """slim's create_test_input: x[i, j] = i + j."""
    return np.arange(h)[:, None] + np.arange(w)[None, :]


def np_conv_same_tf(x, w, stride, rate, explicit):
    """Reference: TF conv on one channel. explicit=True is slim's conv2d_same padding (fixed),
    False is TF's 'SAME' (input-size dependent)."""
    k = w.shape[0]
    k_eff = k + (k - 1) * (rate - 1)
    h, wd = x.shape
    if explicit and stride > 1:
        pt, pb = fixed_padding(k, rate)
        pl, pr = pt, pb
    else:
        pt, pb = same_padding(h, k, stride, rate)
        pl, pr = same_padding(wd, k, stride, rate)
    xp = np.pad(x, ((pt, pb), (pl, pr)))
    oh = (xp.shape[0] - k_eff) // stride + 1
    ow = (xp.shape[1] - k_eff) // stride + 1
    out = np.zeros((oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[i * stride:i * stride + k_eff:rate, j * stride:j * stride + k_eff:rate]
            out[i, j] = (patch * w).sum()
    return out


def run_conv(x, w, stride, rate=1):
    conv = conv2d_same(1, 1, w.shape[0], stride, rate)
    conv.weight.data = torch.tensor(w, dtype=torch.float64)[None, None]
    return conv.double()(torch.tensor(x, dtype=torch.float64)[None, None])[0, 0].detach().numpy()


def test_conv2d_same_even_matches_slim_values():
    # The 4x4 case of slim's resnet_utils_test: y1 (stride 1), its subsample, and conv2d_same stride 2.
    x, w = grid(4, 4), grid(3, 3)
    y1 = run_conv(x, w, 1)
    np.testing.assert_array_equal(y1, [[14, 28, 43, 26], [28, 48, 66, 37], [43, 66, 84, 46], [26, 37, 46, 22]])
    y2 = subsample(torch.tensor(y1)[None, None], 2)[0, 0].numpy()
    np.testing.assert_array_equal(y2, [[14, 43], [43, 84]])
    np.testing.assert_array_equal(run_conv(x, w, 2), y2)
    # TF's own 'SAME' at stride 2 pads an even input at the end only: a different grid.
    np.testing.assert_array_equal(np_conv_same_tf(x, w, 2, 1, explicit=False), [[48, 37], [37, 22]])


def test_conv2d_same_odd_stride2_equals_subsampled_stride1():
    x, w = grid(5, 5), grid(3, 3)
    y1 = run_conv(x, w, 1)
    assert y1[0, 0] == 14 and y1[2, 2] == 84 and y1[4, 4] == 30
    y3 = run_conv(x, w, 2)
    np.testing.assert_array_equal(y3, y1[::2, ::2])
    np.testing.assert_array_equal(y3, np_conv_same_tf(x, w, 2, 1, explicit=False))


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 13), w=st.integers(1, 13), k=st.sampled_from([1, 2, 3, 5, 7]),
       stride=st.sampled_from([1, 2, 3]), rate=st.sampled_from([1, 2, 3]))
def test_conv2d_same_matches_reference(h, w, k, stride, rate):
    rng = np.random.default_rng(h * 1000 + w)
    x, kern = rng.normal(size=(h, w)), rng.normal(size=(k, k))
    out = run_conv(x, kern, stride, rate)
    assert out.shape == (math.ceil(h / stride), math.ceil(w / stride))
    np.testing.assert_allclose(out, np_conv_same_tf(x, kern, stride, rate, explicit=True), atol=1e-9)


def np_maxpool_same(x, k=3, s=2):
    h, w = x.shape
    pt, pb = same_padding(h, k, s)
    pl, pr = same_padding(w, k, s)
    xp = np.pad(x, ((pt, pb), (pl, pr)), constant_values=-np.inf)
    oh, ow = math.ceil(h / s), math.ceil(w / s)
    return np.array([[xp[i * s:i * s + k, j * s:j * s + k].max() for j in range(ow)] for i in range(oh)])


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 16), w=st.integers(1, 16))
def test_max_pool_same_matches_tf_and_padding_never_wins(h, w):
    rng = np.random.default_rng(h * 100 + w)
    x = -np.abs(rng.normal(size=(h, w))) - 1.0  # all negative: a zero pad would win
    out = max_pool2d_same(torch.tensor(x)[None, None])[0, 0].numpy()
    np.testing.assert_array_equal(out, np_maxpool_same(x))
    assert (out < 0).all()


def test_max_pool_same_even_pads_bottom_right_only():
    assert same_padding(112, 3, 2) == (0, 1)
    assert same_padding(113, 3, 2) == (1, 1)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # x[i, j] = 4i + j; windows cover rows/cols 0-2 and 2-3 (the 4th padded with -inf).
    np.testing.assert_array_equal(max_pool2d_same(x)[0, 0].numpy(), [[10, 11], [14, 15]])


@pytest.mark.parametrize("n,factor", [(7, 2), (8, 2), (9, 3), (5, 1)])
def test_subsample(n, factor):
    x = torch.arange(n * n, dtype=torch.float32).reshape(1, 1, n, n)
    out = subsample(x, factor)
    assert out.shape[-1] == math.ceil(n / factor)
    np.testing.assert_array_equal(out[0, 0].numpy(), x[0, 0].numpy()[::factor, ::factor])
