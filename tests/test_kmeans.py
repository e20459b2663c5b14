"""Weighted per-row k-means against scikit-learn and the exact 1-D optimum."""
import numpy as np
import pytest
import torch

from sqcompile.quant.kmeans import (assign_nearest, exact_kmeans_1d, optimal_kmeans_1d, weighted_kmeans_1d,
                                    weighted_sse)


def rows(seed: int, n: int = 24, k: int = 96):
    """Fat-tailed values and fat-tailed weights, like weights and their Fisher information."""
    rng = np.random.default_rng(seed)
    return rng.standard_t(4, size=(n, k)), rng.exponential(size=(n, k)) ** 2


@pytest.mark.parametrize("backend", ["c", "torch"])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_no_worse_than_sklearn_and_near_exact(bits, backend):
    from sklearn.cluster import KMeans

    x, w = rows(bits)
    res = weighted_kmeans_1d(torch.tensor(x), torch.tensor(w), 2 ** bits, iters=50, seed=0, backend=backend)
    ours = weighted_sse(torch.tensor(x), torch.tensor(w), res.centroids)
    assert torch.allclose(ours, res.sse, rtol=1e-9, atol=1e-9)  # prefix-sum SSE == direct SSE
    sk = exact = 0.0
    for i in range(x.shape[0]):
        km = KMeans(n_clusters=2 ** bits, n_init="auto", max_iter=50, random_state=i)
        km.fit(x[i, :, None], sample_weight=w[i])
        sk += weighted_sse(torch.tensor(x[i:i + 1]), torch.tensor(w[i:i + 1]),
                           torch.tensor(km.cluster_centers_.T)).item()
        exact += exact_kmeans_1d(x[i], w[i], 2 ** bits)[1]
    total = ours.sum().item()
    assert exact <= total * (1 + 1e-9)  # nothing beats the optimum
    assert total <= sk, (total, sk)
    assert total <= 1.15 * exact


@pytest.mark.parametrize("k", [1, 2, 8, 16])
def test_optimal_kernel_matches_the_exact_dp(k):
    """The C divide-and-conquer DP against the plain O(k n^2) DP, with weight-zero entries (the sparse part)
    and rows shorter than k; its SSE is what its centroids give and never above Lloyd's."""
    x, w = rows(10 + k, n=12, k=40)
    w[:, :6] = 0.0
    x, w = np.concatenate([x, x[:, :40 - 8 + 1]], 1)[:, :40], w  # repeated values too
    res = optimal_kmeans_1d(torch.tensor(x), torch.tensor(w), k)
    exact = np.array([exact_kmeans_1d(x[i], w[i], k)[1] for i in range(x.shape[0])])
    np.testing.assert_allclose(res.sse.numpy(), exact, rtol=1e-9, atol=1e-12)
    direct = weighted_sse(torch.tensor(x), torch.tensor(w), res.centroids).numpy()
    np.testing.assert_allclose(direct, exact, rtol=1e-9, atol=1e-12)
    assert torch.all(res.centroids.diff(dim=1) >= 0)
    lloyd = weighted_kmeans_1d(torch.tensor(x), torch.tensor(w), k, iters=50, seed=0)
    assert torch.all(res.sse <= lloyd.sse * (1 + 1e-9) + 1e-12)
    if k >= 3:  # at least as many centroids as values: every value exact
        short = optimal_kmeans_1d(torch.tensor(x[:2, :3]), torch.tensor(w[:2, :3] + 1), k)
        assert torch.all(short.sse < 1e-12)


def test_exact_solution_is_optimal_on_small_rows():
    """The DP against brute force over all contiguous partitions of a tiny sorted row."""
    from itertools import combinations

    rng = np.random.default_rng(1)
    x, w = rng.normal(size=9), rng.uniform(0.1, 2, size=9)
    xs, ws = x[np.argsort(x)], w[np.argsort(x)]
    best = np.inf
    for cuts in combinations(range(1, 9), 2):
        parts = np.split(np.arange(9), cuts)
        best = min(best, sum(float((ws[p] * (xs[p] - np.average(xs[p], weights=ws[p])) ** 2).sum()) for p in parts))
    assert exact_kmeans_1d(x, w, 3)[1] == pytest.approx(best, rel=1e-12)


@pytest.mark.parametrize("backend", ["c", "torch"])
def test_deterministic(backend):
    x, w = (torch.tensor(a) for a in rows(7, n=40))
    a = weighted_kmeans_1d(x, w, 8, seed=3, backend=backend)
    b = weighted_kmeans_1d(x, w, 8, seed=3, backend=backend)
    assert torch.equal(a.centroids, b.centroids)
    c = weighted_kmeans_1d(x, w, 8, seed=4, backend=backend)
    assert not torch.equal(a.centroids, c.centroids)
    assert torch.all(a.centroids[:, 1:] >= a.centroids[:, :-1])


@pytest.mark.parametrize("backend", ["c", "torch"])
def test_zero_weight_entries_do_not_pull_centroids(backend):
    x = torch.tensor([[0.0, 0.1, 0.2, 1.0, 1.1, 100.0]])
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 0.0]])
    c = weighted_kmeans_1d(x, w, 2, backend=backend).centroids[0]
    assert torch.allclose(c, torch.tensor([0.1, 1.05], dtype=torch.float64))
    # a row of all-zero weights falls back to uniform weights
    c0 = weighted_kmeans_1d(x[:, :5], torch.zeros(1, 5), 2, backend=backend).centroids[0]
    assert torch.allclose(c0, torch.tensor([0.1, 1.05], dtype=torch.float64))


def test_assign_nearest_matches_argmin():
    x, _ = rows(3)
    lut = torch.sort(torch.randn(x.shape[0], 8, dtype=torch.float64), 1).values
    got = assign_nearest(torch.tensor(x), lut)
    want = (torch.tensor(x)[:, :, None] - lut[:, None, :]).abs().argmin(-1)
    assert torch.equal(got, want)


def test_more_centroids_than_distinct_values():
    x = torch.tensor([[1.0, 1.0, 2.0, 2.0, 2.0]])
    for backend in ("c", "torch"):
        res = weighted_kmeans_1d(x, torch.ones_like(x), 8, backend=backend)
        assert res.sse.item() == pytest.approx(0.0, abs=1e-12)
        assert set(res.centroids[0].tolist()) <= {1.0, 2.0}


def test_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        weighted_kmeans_1d(torch.zeros(2, 3), torch.zeros(2, 4), 4)
    with pytest.raises(ValueError, match="non-negative"):
        weighted_kmeans_1d(torch.zeros(2, 3), -torch.ones(2, 3), 2)
