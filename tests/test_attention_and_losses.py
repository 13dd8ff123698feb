"""Attention maps and loss terms against the loop-by-loop NumPy reference."""

import numpy as np
import pytest
import tensorflow as tf

from icasc_tf import attention, losses
from tests import reference as ref

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _fresh_rng():
    """Each test draws the same numbers whatever ran before it in this worker."""
    global RNG
    RNG = np.random.default_rng(0)
FUNCTIONS = [
    (attention.grad_cam, ref.grad_cam),
    (attention.channel_weighted_attention, ref.a_ch),
    (attention.pixel_wise_attention, ref.a_px),
    (attention.grad_cam_plus_plus, ref.grad_cam_pp),
]


def _features(shape=(3, 5, 4, 6)):
    return RNG.random(shape), RNG.normal(size=shape)


@pytest.mark.parametrize("fn,reference", FUNCTIONS)
def test_attention_matches_reference(fn, reference):
    F, g = _features()
    got = fn(tf.constant(F), tf.constant(g)).numpy()
    want = reference(F, g)
    assert got.shape == (3, 5, 4)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert want.max() > 0  # the random case is not trivially all zero


@pytest.mark.parametrize("fn,reference", FUNCTIONS)
def test_attention_all_negative_gradients(fn, reference):
    F, g = _features()
    g = -np.abs(g)
    got = fn(tf.constant(F), tf.constant(g)).numpy()
    np.testing.assert_allclose(got, reference(F, g), atol=1e-12)
    assert np.isfinite(got).all()


def test_ach_differs_from_gradcam_on_mixed_gradients():
    F, g = _features()
    a = attention.channel_weighted_attention(F, g).numpy()
    b = attention.grad_cam(F, g).numpy()
    assert np.abs(a - b).max() > 1e-3


def test_unknown_attention_lists_choices():
    with pytest.raises(ValueError, match="ach, gradcam, apx"):
        attention.get_attention("cam", trainable=True)


def test_target_mask_matches_reference_and_resizes():
    A = RNG.random((2, 4, 4)) * 1e-3  # small activations: normalisation makes omega scale-free
    got = losses.target_mask(tf.constant(A)).numpy()
    np.testing.assert_allclose(got, ref.mask(A), rtol=1e-9)
    assert got.max() > 0.99 and got.min() < 0.01
    big = losses.target_mask(tf.constant(A), size=(8, 8)).numpy()
    assert big.shape == (2, 8, 8)
    want = tf.image.resize(ref.mask(A)[..., None], (8, 8), method="bilinear")[..., 0].numpy()
    np.testing.assert_allclose(big, want, rtol=1e-9)


def test_separation_and_consistency_match_reference():
    At, Ac, M = RNG.random((3, 4, 4)), RNG.random((3, 4, 4)), RNG.random((3, 4, 4))
    np.testing.assert_allclose(
        losses.attention_separation_loss(At, Ac, M).numpy(), ref.separation(At, Ac, M), rtol=1e-10
    )
    np.testing.assert_allclose(
        losses.attention_consistency_loss(At, M, theta=0.8).numpy(), ref.consistency(At, M), rtol=1e-10
    )


def test_separation_bounds():
    A = RNG.random((2, 4, 4))
    ones = np.ones_like(A)
    np.testing.assert_allclose(losses.attention_separation_loss(A, A, ones).numpy(), [1.0, 1.0], rtol=1e-6)
    disjoint = np.zeros_like(A)
    disjoint[:, :2] = 1.0
    np.testing.assert_allclose(
        losses.attention_separation_loss(disjoint, 1.0 - disjoint, ones).numpy(), [0.0, 0.0], atol=1e-12
    )


def test_all_zero_maps_give_finite_losses_and_gradients():
    zeros = tf.zeros((2, 4, 4), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(zeros)
        m = losses.target_mask(zeros, size=(8, 8))
        as_loss = losses.attention_separation_loss(zeros, zeros, losses.target_mask(zeros))
        ac_loss = losses.attention_consistency_loss(zeros, losses.target_mask(zeros))
    np.testing.assert_allclose(as_loss.numpy(), [0.0, 0.0])
    np.testing.assert_allclose(ac_loss.numpy(), [0.8, 0.8], rtol=1e-6)
    for value in (m, as_loss, ac_loss):
        grad = tape.gradient(value, zeros)
        assert grad is not None and np.isfinite(grad.numpy()).all()


def test_multilabel_soft_margin_matches_reference():
    y = (RNG.random((4, 6)) > 0.5).astype("float64")
    z = RNG.normal(size=(4, 6))
    np.testing.assert_allclose(
        losses.multilabel_soft_margin_loss(y, tf.constant(z)).numpy(), ref.multilabel_soft_margin(y, z), rtol=1e-10
    )
