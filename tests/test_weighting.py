"""Weighting schemes computed by hand on tiny matrices."""

import numpy as np
import pytest
import scipy.sparse as sp

from svdfaiss.errors import InvalidInput
from svdfaiss.weighting import WeightingParams, item_column_scale, weight_row, weight_rows

RAW = sp.csr_matrix(np.array([[2.0, 0.0, 1.0], [1.0, 3.0, 0.0], [4.0, 0.0, 0.0]]))


def weighted(scheme, beta=0.0):
    scale, mean = item_column_scale(RAW, scheme, beta)
    return weight_rows(RAW, WeightingParams(scheme, beta, mean_row_length=mean), scale).toarray()


def test_none_binary_log():
    np.testing.assert_allclose(weighted("none"), RAW.toarray())
    np.testing.assert_allclose(weighted("binary"), (RAW.toarray() > 0).astype(float))
    np.testing.assert_allclose(weighted("log"), np.log1p(RAW.toarray()), rtol=1e-6)


def test_popularity_scaling_divides_columns_by_users_to_the_beta():
    # item users: [3, 1, 1]
    expected = np.log1p(RAW.toarray()) * np.array([3.0, 1.0, 1.0]) ** -0.5
    np.testing.assert_allclose(weighted("log", beta=0.5), expected, rtol=1e-6)


def test_bm25_matches_the_formula():
    k1, b = 1.2, 0.75
    x = RAW.toarray()
    totals = x.sum(axis=1)
    mean = totals.mean()
    idf = np.maximum(np.log(3 / np.array([3.0, 1.0, 1.0])), 1e-3)
    expected = np.where(x > 0, x * (k1 + 1) / (x + k1 * (1 - b + b * totals[:, None] / mean)),
                        0) * idf
    np.testing.assert_allclose(weighted("bm25"), expected, rtol=1e-5)


def test_bad_scheme_and_beta_are_refused():
    with pytest.raises(InvalidInput, match="unknown weighting"):
        item_column_scale(RAW, "tfidf", 0.0)
    with pytest.raises(InvalidInput, match="beta"):
        item_column_scale(RAW, "log", 1.5)


@pytest.mark.parametrize("scheme", ["none", "binary", "log", "bm25"])
def test_one_row_weighs_bit_for_bit_like_the_matrix(scheme):
    """weight_row (the per-request path, no sparse matrix) gives exactly weight_rows' row,
    rows of many entries too (where a pairwise sum would differ from scipy's row total)."""
    rng = np.random.default_rng(3)
    dense = rng.integers(1, 9, (300, 500)) * (rng.random((300, 500)) < 0.08)
    dense[0] = 0  # an empty row too
    matrix = sp.csr_matrix(dense.astype(np.float32))
    scale, mean = item_column_scale(matrix, scheme, 0.4)
    params = WeightingParams(scheme, 0.4, mean_row_length=mean)
    whole = weight_rows(matrix, params, scale)
    for user in range(matrix.shape[0]):
        lo, hi = matrix.indptr[user], matrix.indptr[user + 1]
        one = weight_row(matrix.data[lo:hi], matrix.indices[lo:hi], params, scale)
        assert one.dtype == np.float32
        assert one.tobytes() == whole.data[lo:hi].tobytes(), user
