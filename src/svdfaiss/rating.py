"""A rating model of surprise's "SVD" family, fitted by alternating least squares.

Biased matrix factorization predicts r_ui = mu + b_u + b_i + p_u . q_i (surprise's SVD, fitted
there by SGD). Here both sides are solved in closed form in turn (ALS): given the items,
each user's [p_u, b_u] is a ridge regression on the rows [q_i, 1] of the items they rated, and
symmetrically for items. All users (or items) are solved at once, by a few warm-started
conjugate-gradient steps (or exactly), starting from the biases and a randomized SVD of the
residuals, so that two sweeps suffice.

The per-row pieces (the ridge diagonal, the data part of A x, the right-hand sides, the
batched CG steps, the shrunk means, the SVD start's sketch and its small eigenproblem) are
functions of their own: the Spark engine (svdfaiss.spark.rating) runs them on blocks of
users and on item-side sums.

Ranking stays exact inside FAISS: with the user vector [p_u, 1] and the item vector
[q_i, b_i], the inner product is p_u . q_i + b_i, the prediction minus mu + b_u, which is the
same for every item of a user.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from svdfaiss.errors import InvalidInput

DEFAULT_K = 8
DEFAULT_REG = 0.2
DEFAULT_BIAS_REG = 5.0
# Two sweeps of two conjugate-gradient steps from an SVD start: on ml-latest-small, 6 exact
# sweeps lower the 5-fold RMSE by 0.005 more at 4x the fit time, and k 16 by 0.0003 at 2x
# (docs/evaluation.md, "Rating prediction").
DEFAULT_ITERATIONS = 2
DEFAULT_CG_STEPS = 2  # 0: exact batched solves
BIAS_ROUNDS = 3  # alternating averages of the user and item offsets
START_OVERSAMPLE = 8  # extra columns of the SVD start's sketch
START_POWER_STEPS = 1
RATING_GRID: dict[str, tuple[float, ...]] = {"k": (0, 4, 8), "reg": (0.1, 0.2, 0.5)}


@dataclass(frozen=True)
class RatingModel:
    """mu + b_u + b_i + p_u . q_i, clipped to the training ratings' range."""

    mu: float
    user_bias: np.ndarray
    item_bias: np.ndarray
    user_factors: np.ndarray  # P, users x k
    item_factors: np.ndarray  # Q, items x k
    low: float
    high: float

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Predicted ratings of (user, item) pairs given by internal index."""
        raw = (self.mu + self.user_bias[users] + self.item_bias[items]
               + np.einsum("ij,ij->i", self.user_factors[users], self.item_factors[items]))
        return np.asarray(np.clip(raw, self.low, self.high))

    def user_vectors(self) -> np.ndarray:
        """[p_u, 1]: the query side of the FAISS inner product."""
        return query_vectors(self.user_factors)

    def item_vectors(self) -> np.ndarray:
        """[q_i, b_i]: the indexed side; p_u . q_i + b_i ranks like the prediction."""
        return np.ascontiguousarray(np.hstack([self.item_factors, self.item_bias[:, None]]),
                                    dtype=np.float32)


def query_vectors(user_factors: np.ndarray) -> np.ndarray:
    """[p_u, 1] as float32, for the rows of P given."""
    ones = np.ones((user_factors.shape[0], 1))
    return np.ascontiguousarray(np.hstack([user_factors, ones]), dtype=np.float32)


def check_params(nnz: int, k: int, reg: float, iterations: int) -> None:
    """The rating model's parameters, refused as the fit would misuse them."""
    if nnz == 0:
        raise InvalidInput("no ratings to fit")
    if k < 0 or iterations < 1:
        raise InvalidInput(f"the rating model needs k >= 0 and iterations >= 1, got k {k}, "
                           f"iterations {iterations}")
    if reg <= 0:
        raise InvalidInput(f"the rating model's regularization must be > 0, got {reg}")


def _solve_side(mask: sp.csr_matrix, target_values: np.ndarray, other: np.ndarray, reg: float,
                bias_reg: float, block: int = 65_536) -> np.ndarray:
    """For every row r of `mask`: argmin_x sum_j (t_rj - z_j . x)^2 + reg n_r |x_f|^2 +
    bias_reg x_b^2, with z_j = [other_j, 1] over the row's columns j; x = [x_f, x_b].

    The normal equations' matrices come from one sparse product with the outer products
    z_j z_j^T (rows in blocks, to bound memory), then one batched solve.
    """
    k1 = other.shape[1] + 1
    z = np.hstack([other, np.ones((other.shape[0], 1))])
    outer = (z[:, :, None] * z[:, None, :]).reshape(z.shape[0], k1 * k1)
    counts = np.diff(mask.indptr).astype(np.float64)
    ridge = np.full(k1, reg)
    ridge[-1] = 0.0
    out = np.empty((mask.shape[0], k1))
    targets = sp.csr_matrix((target_values, mask.indices, mask.indptr), shape=mask.shape)
    for start in range(0, mask.shape[0], block):
        rows = slice(start, min(start + block, mask.shape[0]))
        flat = np.asarray(mask[rows] @ outer)
        flat[:, :: k1 + 1] += np.maximum(counts[rows], 1.0)[:, None] * ridge
        flat[:, -1] += bias_reg
        rhs = np.asarray(targets[rows] @ z)
        out[rows] = np.linalg.solve(flat.reshape(-1, k1, k1), rhs[:, :, None])[:, :, 0]
    return out


def augmented(other: np.ndarray) -> np.ndarray:
    """z_j = [other_j, 1] in float32: the regressors of the other side's rows."""
    return np.hstack([other, np.ones((other.shape[0], 1))]).astype(np.float32)


def ridge_diagonal(counts: np.ndarray, width: int, reg: float, bias_reg: float) -> np.ndarray:
    """The ridge part of each row's normal matrix, as a diagonal (rows x width, float32):
    reg * max(n_r, 1) on the factors, bias_reg on the bias (n_r the row's ratings)."""
    diagonal: np.ndarray = np.full(width, reg, dtype=np.float32)[None, :] * np.maximum(
        np.asarray(counts), 1)[:, None].astype(np.float32)
    diagonal[:, -1] = bias_reg
    return diagonal


def data_product(mask: sp.csr_matrix, z: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """x -> (sum_j z_j z_j^T x_r)_r over each row r's columns j of `mask`: the data part of
    the normal equations' A x (A = that + the ridge diagonal), one pass over the ratings
    with k + 1 numbers per rating. The per-rating rows of z are gathered once."""
    rows = np.repeat(np.arange(mask.shape[0]), np.diff(mask.indptr))
    z_entries = z[mask.indices]

    def product(x: np.ndarray) -> np.ndarray:
        dots = np.einsum("ij,ij->i", z_entries, x[rows])
        return np.asarray(sp.csr_matrix((dots, mask.indices, mask.indptr), shape=mask.shape)
                          @ z)

    return product


def right_hand_side(mask: sp.csr_matrix, target_values: np.ndarray, z: np.ndarray
                    ) -> np.ndarray:
    """b_r = sum_j t_rj z_j over each row r's columns j (float32)."""
    return np.asarray(sp.csr_matrix((target_values.astype(np.float32), mask.indices,
                                     mask.indptr), shape=mask.shape) @ z)


def cg_steps(times_a: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
             residual: np.ndarray, steps: int) -> np.ndarray:
    """`steps` conjugate-gradient steps of every row's own system A_r x_r = b_r at once,
    from x (updated in place) whose residual b - A x is given; `times_a` applies every
    row's A_r. Per row: alpha = |r|^2 / d.Ad, x += alpha d, r -= alpha Ad,
    d = r + (|r_new|^2 / |r|^2) d."""
    direction = residual.copy()
    norm = np.einsum("ij,ij->i", residual, residual)
    for _ in range(steps):
        a_direction = times_a(direction)
        curvature = np.einsum("ij,ij->i", direction, a_direction)
        alpha = np.divide(norm, curvature, out=np.zeros_like(norm), where=curvature > 0)
        x += alpha[:, None] * direction
        residual -= alpha[:, None] * a_direction
        new_norm = np.einsum("ij,ij->i", residual, residual)
        beta = np.divide(new_norm, norm, out=np.zeros_like(norm), where=norm > 0)
        direction = residual + beta[:, None] * direction
        norm = new_norm
    return x


def _cg_side(mask: sp.csr_matrix, target_values: np.ndarray, other: np.ndarray,
             start: np.ndarray, reg: float, bias_reg: float, steps: int) -> np.ndarray:
    """The same ridge regressions as _solve_side, approximately: a few conjugate-gradient
    steps per row from `start` (the previous sweep's answer), all rows at once.

    Each step costs one pass over the ratings with k + 1 numbers per rating, where the exact
    solve builds (k + 1)^2 per rating plus a factorization per row; warm-started, three
    steps reach the exact solve's error (tests/test_models.py compares them).
    """
    # float32: the products are memory-bound, and ratings need no more precision
    z = augmented(other)
    diagonal = ridge_diagonal(np.diff(mask.indptr), z.shape[1], reg, bias_reg)
    product = data_product(mask, z)

    def times_a(x: np.ndarray) -> np.ndarray:
        return np.asarray(product(x) + diagonal * x)

    b = right_hand_side(mask, target_values, z)
    x = start.astype(np.float32)
    return cg_steps(times_a, x, b - times_a(x), steps).astype(np.float64)


def fit_rating_model(matrix: sp.csr_matrix, k: int = DEFAULT_K, reg: float = DEFAULT_REG,
                     bias_reg: float = DEFAULT_BIAS_REG, iterations: int = DEFAULT_ITERATIONS,
                     seed: int = 0, cg_steps: int = DEFAULT_CG_STEPS) -> RatingModel:
    """Fit on the stored entries of a users x items ratings matrix (missing = unknown).

    k 0 fits the biases alone (the baseline predictor mu + b_u + b_i).
    """
    check_params(matrix.nnz, k, reg, iterations)
    matrix = matrix.tocsr()
    matrix.sort_indices()
    coo = matrix.tocoo()  # row-major: the users side's CSR order
    users, items = coo.row.astype(np.int64), coo.col.astype(np.int64)
    ratings = coo.data.astype(np.float64)
    n_users, n_items = matrix.shape
    mu = float(ratings.mean())
    by_item = np.lexsort((users, items))  # the items side's CSR order
    mask_users = sp.csr_matrix((np.ones_like(ratings), coo.col, matrix.indptr),
                               shape=matrix.shape)
    mask_items = sp.csr_matrix((np.ones_like(ratings), (items[by_item], users[by_item])),
                               shape=(n_items, n_users))
    user_bias, item_bias = _biases(users, items, ratings - mu, n_users, n_items, bias_reg)
    q = _svd_start(matrix, ratings - mu - user_bias[users] - item_bias[items], k, seed)
    p = np.zeros((n_users, k))
    for _ in range(iterations):
        values = ratings - mu - item_bias[items]
        solved = (_solve_side(mask_users, values, q, reg, bias_reg) if cg_steps == 0 else
                  _cg_side(mask_users, values, q, np.column_stack([p, user_bias]), reg,
                           bias_reg, cg_steps))
        p, user_bias = solved[:, :k], solved[:, k]
        values = (ratings - mu - user_bias[users])[by_item]
        solved = (_solve_side(mask_items, values, p, reg, bias_reg) if cg_steps == 0 else
                  _cg_side(mask_items, values, p, np.column_stack([q, item_bias]), reg,
                           bias_reg, cg_steps))
        q, item_bias = solved[:, :k], solved[:, k]
    return RatingModel(mu, user_bias, item_bias, p, q, float(ratings.min()),
                       float(ratings.max()))


def shrunk_means(sums: np.ndarray, counts: np.ndarray, bias_reg: float) -> np.ndarray:
    """b = sum / (n + bias_reg): a mean of residuals shrunk toward 0 (one side's offsets)."""
    return np.asarray(sums / (counts + bias_reg))


def _biases(users: np.ndarray, items: np.ndarray, centred: np.ndarray, n_users: int,
            n_items: int, bias_reg: float, rounds: int = BIAS_ROUNDS
            ) -> tuple[np.ndarray, np.ndarray]:
    """Regularized user and item offsets from the mean, by a few alternating averages."""
    user_count = np.bincount(users, minlength=n_users)
    item_count = np.bincount(items, minlength=n_items)
    user_bias = np.zeros(n_users)
    item_bias = np.zeros(n_items)
    for _ in range(rounds):
        item_bias = shrunk_means(np.bincount(items, centred - user_bias[users], n_items),
                                 item_count, bias_reg)
        user_bias = shrunk_means(np.bincount(users, centred - item_bias[items], n_users),
                                 user_count, bias_reg)
    return user_bias, item_bias


def start_sketch(n_items: int, k: int, seed: int) -> np.ndarray:
    """The random items x (k + START_OVERSAMPLE) sketch the SVD start begins from."""
    return np.random.default_rng(seed).standard_normal((n_items, k + START_OVERSAMPLE))


def start_factors(basis: np.ndarray, gram: np.ndarray, k: int) -> np.ndarray:
    """V sqrt(S) of the rank-k SVD of R restricted to an orthonormal item basis B, from the
    l x l Gram G = (R B)^T (R B) = W L W^T: V = B W_k, S = L_k^1/2."""
    eigenvalues, vectors = np.linalg.eigh(gram)
    top = np.argsort(eigenvalues)[::-1][:k]
    s = np.sqrt(np.maximum(eigenvalues[top], 0.0))
    return np.asarray((basis @ vectors[:, top]) * np.sqrt(s))


def _svd_start(matrix: sp.csr_matrix, residuals: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Item factors to start from: V sqrt(S) of a randomized rank-k SVD of the residuals
    (missing entries as 0). ALS from there needs a few sweeps instead of many.

    Only items-side bases are orthogonalized, and the small problem is solved through the
    l x l Gram of R Q, so no tall users-side QR is needed (47k users: 45 ms saved).
    """
    if k == 0:
        return np.zeros((matrix.shape[1], 0))
    resid = sp.csr_matrix((residuals, matrix.indices, matrix.indptr), shape=matrix.shape)
    basis = start_sketch(matrix.shape[1], k, seed)
    for _ in range(1 + START_POWER_STEPS):
        basis = np.linalg.qr(np.asarray(resid.T @ (resid @ basis)))[0]
    projected = np.asarray(resid @ basis)
    return start_factors(basis, projected.T @ projected, k)


def fold_in_ratings(model: RatingModel, items: np.ndarray, ratings: np.ndarray,
                    reg: float = DEFAULT_REG, bias_reg: float = DEFAULT_BIAS_REG) -> np.ndarray:
    """[p, b] of a user the model never saw, from their ratings: the same ridge regression
    a training user gets (so a training user's own row reproduces their vector closely)."""
    return fold_in_augmented(model.item_vectors(), model.mu, items, ratings, reg, bias_reg)


def fold_in_augmented(item_vectors: np.ndarray, mu: float, items: np.ndarray,
                      ratings: np.ndarray, reg: float = DEFAULT_REG,
                      bias_reg: float = DEFAULT_BIAS_REG) -> np.ndarray:
    """fold_in_ratings from the stored [q_i, b_i] vectors of a bundle."""
    factors = np.asarray(item_vectors[:, :-1], dtype=np.float64)
    item_bias = np.asarray(item_vectors[:, -1], dtype=np.float64)
    order = np.argsort(items, kind="stable")
    items = np.asarray(items)[order]
    values = np.asarray(ratings, dtype=np.float64)[order] - mu - item_bias[items]
    mask = sp.csr_matrix((np.ones(items.size), items, [0, items.size]),
                         shape=(1, factors.shape[0]))
    solved: np.ndarray = _solve_side(mask, values, factors, reg, bias_reg)[0]
    return solved


def rating_folds(nnz: int, folds: int = 5, seed: int = 42) -> np.ndarray:
    """Fold number of each stored rating: a seeded random permutation cut in equal parts."""
    if folds < 2 or folds > nnz:
        raise InvalidInput(f"cannot make {folds} folds of {nnz} ratings")
    assignment = np.empty(nnz, dtype=np.int64)
    assignment[np.random.default_rng(seed).permutation(nnz)] = np.arange(nnz) % folds
    return assignment


@dataclass(frozen=True)
class RatingPart:
    """A train matrix and the held-out ratings to predict: (rows, cols) -> ratings."""

    train: sp.csr_matrix
    rows: np.ndarray
    cols: np.ndarray
    ratings: np.ndarray

    def errors(self, predicted: np.ndarray) -> tuple[float, float]:
        """RMSE and MAE of predictions for the held-out ratings."""
        error = np.asarray(predicted, dtype=np.float64) - self.ratings
        return float(np.sqrt(np.mean(error ** 2))), float(np.mean(np.abs(error)))


def _part(shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray, data: np.ndarray,
          held: np.ndarray) -> RatingPart:
    train = sp.csr_matrix((data[~held], (rows[~held], cols[~held])), shape=shape)
    return RatingPart(train, rows[held], cols[held], data[held])


def fold_parts(matrix: sp.csr_matrix, folds: int = 5, seed: int = 42) -> list[RatingPart]:
    """The k folds of the protocol: each fold held out once, the others train."""
    coo = matrix.tocoo()
    assignment = rating_folds(coo.nnz, folds, seed)
    return [_part(matrix.shape, coo.row, coo.col, coo.data, assignment == fold)
            for fold in range(folds)]


def validation_part(matrix: sp.csr_matrix, seed: int = 42) -> RatingPart:
    """The tuning split: a fifth (seed + 1) of fold 0's train part held out; no test fold
    rating is ever seen."""
    coo = matrix.tocoo()
    train = rating_folds(coo.nnz, 5, seed) != 0
    inner = rating_folds(int(train.sum()), 5, seed + 1)
    return _part(matrix.shape, coo.row[train], coo.col[train], coo.data[train], inner == 0)


FitPredict = Callable[[RatingPart], tuple[np.ndarray, float]]  # predictions, fit seconds


def cross_validate_with(matrix: sp.csr_matrix, fit_predict: FitPredict, folds: int = 5,
                        seed: int = 42) -> dict[str, Any]:
    """k-fold RMSE and MAE of any rating predictor (mean over folds) and its mean fit time."""
    rmses, maes, seconds = [], [], []
    for part in fold_parts(matrix, folds, seed):
        predicted, fit = fit_predict(part)
        rmse, mae = part.errors(predicted)
        rmses.append(rmse)
        maes.append(mae)
        seconds.append(fit)
    return {"rmse": float(np.mean(rmses)), "mae": float(np.mean(maes)),
            "rmse_by_fold": rmses, "fit_seconds": float(np.mean(seconds)),
            "folds": folds, "seed": seed}


def cross_validate(matrix: sp.csr_matrix, folds: int = 5, seed: int = 42,
                   **params: Any) -> dict[str, Any]:
    """k-fold RMSE and MAE of the rating model (mean over folds) and its mean fit time."""
    def fit_predict(part: RatingPart) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        model = fit_rating_model(part.train, **params)
        seconds = time.perf_counter() - start
        return model.predict(part.rows, part.cols), seconds

    return {**cross_validate_with(matrix, fit_predict, folds, seed), "params": params}


def tune_rating_model(matrix: sp.csr_matrix, grid: dict[str, tuple[float, ...]] | None = None,
                      seed: int = 42) -> dict[str, Any]:
    """Choose k and reg on `validation_part`, then report the winner's 5-fold figures."""
    grid = {**RATING_GRID, **(grid or {})}
    part = validation_part(matrix, seed)
    trials = []
    for k in grid["k"]:
        for reg in grid["reg"]:
            model = fit_rating_model(part.train, k=int(k), reg=float(reg))
            rmse, _ = part.errors(model.predict(part.rows, part.cols))
            trials.append({"k": int(k), "reg": float(reg), "rmse": rmse})
    best = min(trials, key=lambda t: t["rmse"])
    return {"validation": sorted(trials, key=lambda t: t["rmse"]), "best": best,
            "cross_validation": cross_validate(matrix, seed=seed, k=best["k"], reg=best["reg"])}
