"""Query vectors by fold-in: known users, raw rows, baskets, and rows with live events.

For the SVD model a row x folds in as q = x V F (F = 1 without shrinkage, factorize.py);
under a rating model a row is a ridge fit [p, 1] (rating.py); a neural bundle's encoder
(svdfaiss.encoder) maps the row to its query vector, [z, 1] for Mult-VAE.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp

from svdfaiss.data import lookup
from svdfaiss.query.model import LoadedModel
from svdfaiss.query.retrieval import NONE
from svdfaiss.rating import fold_in_augmented
from svdfaiss.weighting import weight_row, weight_rows


def seen_items(model: LoadedModel, user: int) -> np.ndarray:
    """Internal indexes of the items a known user interacted with."""
    start, end = model.rows.indptr[user], model.rows.indptr[user + 1]
    seen: np.ndarray = np.asarray(model.rows.indices[start:end], dtype=np.int64)
    return seen


def fold_rows(model: LoadedModel, raw_rows: sp.csr_matrix) -> np.ndarray:
    """q = w(x) V F for each raw row x, w the bundle's weighting (a neural bundle: the
    encoder's output for w(x))."""
    return model.fold(weight_rows(raw_rows, model.weighting, model.item_scale))


def user_vector(model: LoadedModel, user: int) -> np.ndarray:
    """q = x V F for a known user: that user's row of U S F (F = 1 without shrinkage);
    [p_u, 1] under a rating model."""
    if model.rating_users is not None:
        return np.asarray(model.rating_users[user])
    # A neural bundle's rows go through its encoder; an unsorted row is sorted by weight_rows
    # first. Otherwise the linear fold-in of the stored arrays, without a sparse matrix.
    if model.encoder is not None or not model.rows_sorted:
        vector: np.ndarray = fold_rows(model, model.rows[user : user + 1])[0]
        return vector
    start, end = model.rows.indptr[user], model.rows.indptr[user + 1]
    return fold_entries(model, model.rows.indices[start:end], model.rows.data[start:end])


def fold_entries(model: LoadedModel, items: np.ndarray, values: np.ndarray) -> np.ndarray:
    """q = w(x) V F of one raw row given as item positions (ascending) and values.

    Bit for bit `fold_rows` of that row, without a sparse matrix (scipy's constructors cost
    more than the product for one row): scipy's product adds the weighted rows of V F one by
    one in the row's order, starting from zero, and so does np.add.reduce over axis 0.
    """
    weighted = weight_row(values, items, model.weighting, model.item_scale)
    terms = weighted[:, None] * model.fold_factors[items]
    vector: np.ndarray = np.add.reduce(terms, axis=0, initial=np.float32(0.0))
    return vector


def similarity_vector(model: LoadedModel, user: int) -> np.ndarray:
    """The vector the similar-users index holds for a user, before normalization."""
    if model.rating_users is not None:
        return np.asarray(model.rating_users[user, :-1])
    if model.encoder is not None and model.encoder.append_one:  # [z, 1]: z alone
        return user_vector(model, user)[:-1]
    return user_vector(model, user)


def row_vector(model: LoadedModel, row: sp.csr_matrix) -> np.ndarray:
    """The query vector of a raw user row: its fold-in (rating model: its ridge fit)."""
    if model.rating_model is not None:
        solved = fold_in_augmented(model.item_factors, model.rating_model["mu"],
                                   row.indices.astype(np.int64), row.data)
        return np.append(solved[:-1], 1.0).astype(np.float32)
    vector: np.ndarray = fold_rows(model, row)[0]
    return vector


def basket_row(model: LoadedModel, items: np.ndarray) -> sp.csr_matrix:
    """A basket as a raw user row: each item counted as often as it is given."""
    counts = np.bincount(items, minlength=model.n_items).astype(np.float32)
    nz = np.flatnonzero(counts)
    return sp.csr_matrix((counts[nz], nz, [0, nz.size]), shape=(1, model.n_items))


def basket_vector(model: LoadedModel, items: np.ndarray) -> np.ndarray:
    """q = x V F for an anonymous basket; repeated items count like repeated events.

    Under a rating model the basket is folded in as a user who rated each item at the top
    of the scale (a basket says "liked"): [p, 1] from the same ridge regression.
    """
    if model.rating_model is not None:
        unique = np.unique(items)
        top = np.full(unique.size, model.rating_model["high"], dtype=np.float32)
        return row_vector(model, sp.csr_matrix((top, unique, [0, unique.size]),
                                               shape=(1, model.n_items)))
    return row_vector(model, basket_row(model, items))


def live_row(model: LoadedModel, user: int, live: Mapping[str, float]) -> sp.csr_matrix:
    """A user's raw row with their live events merged in (unknown items are skipped):
    counts add, and under explicit feedback a new rating replaces the stored one."""
    found = lookup(model.item_ids, list(live))
    known = found >= 0
    extra_items = found[known]
    extra_values = np.asarray(list(live.values()), dtype=np.float32)[known]
    if user >= 0:
        start, end = model.rows.indptr[user], model.rows.indptr[user + 1]
        base_items = np.asarray(model.rows.indices[start:end], dtype=np.int64)
        base_values = np.asarray(model.rows.data[start:end], dtype=np.float32)
    else:
        base_items, base_values = NONE, np.empty(0, dtype=np.float32)
    if model.feedback == "explicit":  # a new rating replaces the old
        stale = np.isin(base_items, extra_items)
        base_items, base_values = base_items[~stale], base_values[~stale]
    row = sp.csr_matrix((np.concatenate([base_values, extra_values]),
                         (np.zeros(base_items.size + extra_items.size, dtype=np.int64),
                          np.concatenate([base_items, extra_items]))),
                        shape=(1, model.n_items))
    row.sum_duplicates()
    return row
