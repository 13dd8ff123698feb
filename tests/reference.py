"""Independent NumPy versions of the paper's equations, written loop-by-loop from docs/method.md."""

import numpy as np

EPS = 1e-8


def relu(x):
    return np.maximum(x, 0.0)


def grad_cam(F, g):
    B, H, W, K = F.shape
    out = np.zeros((B, H, W))
    for b in range(B):
        alpha = [g[b, :, :, k].mean() for k in range(K)]
        out[b] = relu(sum(alpha[k] * F[b, :, :, k] for k in range(K)))
    return out


def a_ch(F, g):
    B, H, W, K = F.shape
    out = np.zeros((B, H, W))
    for b in range(B):
        alpha = [relu(g[b, :, :, k]).mean() for k in range(K)]
        out[b] = relu(sum(alpha[k] * F[b, :, :, k] for k in range(K)))
    return out


def a_px(F, g):
    B, H, W, K = F.shape
    out = np.zeros((B, H, W))
    for b in range(B):
        for i in range(H):
            for j in range(W):
                out[b, i, j] = relu(np.mean(g[b, i, j, :] * F[b, i, j, :]))
    return out


def grad_cam_pp(F, g):
    B, H, W, K = F.shape
    out = np.zeros((B, H, W))
    for b in range(B):
        alpha = np.zeros(K)
        for k in range(K):
            s = F[b, :, :, k].sum()
            for i in range(H):
                for j in range(W):
                    gg = g[b, i, j, k]
                    den = 2 * gg**2 + s * gg**3
                    a = gg**2 / den if den != 0 else 0.0
                    alpha[k] += a * max(gg, 0.0)
        out[b] = relu(sum(alpha[k] * F[b, :, :, k] for k in range(K)))
    return out


def mask(A, sigma=0.55, omega=100.0):
    out = np.zeros_like(A)
    for b in range(A.shape[0]):
        n = A[b] / (A[b].max() + EPS)
        out[b] = 1.0 / (1.0 + np.exp(-omega * (n - sigma)))
    return out


def separation(At, Ac, M):
    return np.array(
        [2 * (np.minimum(At[b], Ac[b]) * M[b]).sum() / ((At[b] + Ac[b]).sum() + EPS) for b in range(At.shape[0])]
    )


def consistency(A, M, theta=0.8):
    return np.array([theta - (A[b] * M[b]).sum() / (A[b].sum() + EPS) for b in range(A.shape[0])])


def multilabel_soft_margin(y, z):
    # log(sigmoid(z)) and log(1 - sigmoid(z)) written out, averaged over classes.
    return np.mean(-(y * np.log(1 / (1 + np.exp(-z))) + (1 - y) * np.log(1 - 1 / (1 + np.exp(-z)))), axis=-1)


def check_finite_differences(loss, variable, analytic, count, h=1e-5, rtol=1e-3, atol=1e-8):
    """Central differences of ``loss()`` (a scalar tensor) at the ``count`` entries of ``variable`` where
    ``analytic`` (its gradient) is largest, against ``analytic``; ``variable`` is restored."""
    original = variable.numpy()
    for index in np.argsort(-np.abs(analytic).ravel())[:count]:
        idx = np.unravel_index(index, original.shape)
        values = []
        for step in (h, -h):
            w = original.copy()
            w[idx] += step
            variable.assign(w)
            values.append(float(loss()))
        variable.assign(original)
        np.testing.assert_allclose(analytic[idx], (values[0] - values[1]) / (2 * h), rtol=rtol, atol=atol)
