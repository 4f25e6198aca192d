"""Which history items make a recommendation: exact shares of its score."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from svdfaiss.data import decode_ids
from svdfaiss.query.model import LoadedModel
from svdfaiss.weighting import weight_rows

EXPLAIN_TOP = 3  # history items named per recommended item


def explain(model: LoadedModel, row: sp.csr_matrix,
            idx: np.ndarray) -> list[list[dict[str, Any]]]:
    """For each recommended item, the history items that add most to its score.

    The score is q . v_i with q = sum_j w_j fold_j over the weighted history row w, so
    item j adds exactly w_j (fold_j . v_i); the largest positive shares are named. A neural
    encoder is not a sum over items: there item j's share is how much the score falls
    when j is left out of the history (_leave_one_out).
    """
    weighted = weight_rows(row, model.weighting, model.item_scale)
    history = weighted.indices.astype(np.int64)
    if history.size == 0 or idx.size == 0:
        return [[] for _ in idx]
    if model.encoder is not None:
        shares = _leave_one_out(model, weighted, idx)
    else:
        shares = (np.asarray(model.fold_factors[history]) * weighted.data[:, None]
                  ) @ np.asarray(model.recommendation_vectors(idx)).T
    titles = model.catalog.get("title")
    out = []
    for column in shares.T:
        top = np.argsort(-column, kind="stable")[:EXPLAIN_TOP]
        top = top[column[top] > 0]
        named = []
        for ext, j in zip(decode_ids(model.item_ids[history[top]]), top, strict=True):
            entry: dict[str, Any] = {"item_id": ext, "contribution": float(column[j])}
            if titles is not None:
                entry["title"] = titles[history[j]]
            named.append(entry)
        out.append(named)
    return out


def _leave_one_out(model: LoadedModel, weighted: sp.csr_matrix, idx: np.ndarray) -> np.ndarray:
    """(history x recommended) score drops: q(w) . v_i - q(w without item j) . v_i, one
    encoder pass over the history's rows with one item removed each."""
    n = weighted.nnz
    keep = ~np.eye(n, dtype=bool)
    rows = sp.csr_matrix((np.tile(weighted.data, n)[keep.ravel()],
                          np.tile(weighted.indices, n)[keep.ravel()],
                          np.arange(0, n * (n - 1) + 1, n - 1) if n > 1 else np.zeros(2, int)),
                         shape=(n, weighted.shape[1]))
    vectors = np.asarray(model.recommendation_vectors(idx))
    full = model.fold(weighted) @ vectors.T
    return np.asarray(full - model.fold(rows) @ vectors.T)
