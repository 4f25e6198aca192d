"""How much collaborative evidence the model has for each item and user.

Two measures, both recorded by the builder (bundle files `item_component.npy` and
`item_co_users.npy`):

- the co-interaction component of each item: items are linked when one user interacted
  with both, and a component is a set of items joined by chains of such links. An item alone
  in its component (nobody who interacted with it interacted with anything else) has no
  collaborative evidence at all: nothing relates it to another item. Items in different
  components are unrelated by the log, so a cf neighbour never crosses components;
- the item's co-users, the users who interacted with it and with at least one other item.
  Below MIN_CO_USERS the SVD vector summarises too little (most of it is rounding noise
  scaled to unit length), and co-occurrence, the users the items share, is the honest
  measure of similarity instead; above it the factors rank as well as co-occurrence
  (docs/evaluation.md, "Similar items on a sparse purchase log").

A user has cf evidence when their history holds at least one item with evidence.
`co_item_counts` (distinct other items its buyers bought) counts the same evidence another
way, for evaluation (scripts/eval_similar_sparse.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

# Below this many co-users an item's neighbours come from co-occurrence ("co_bought")
# instead of the factors ("cf"): the one gate of SVD that was level with item-kNN on both
# the Amazon sample and MovieLens (scripts/eval_similar_sparse.py).
MIN_CO_USERS = 50
# Warn at build time when fewer items than this share have cf evidence.
WARN_SHARE = 0.5


def _binary(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """Ones where a user bought an item (explicit zeros and duplicates dropped)."""
    binary = sp.csr_matrix(matrix)
    binary.sum_duplicates()
    coo = binary.tocoo()
    kept = coo.data != 0
    return sp.csr_matrix((np.ones(int(kept.sum()), dtype=np.int64),
                          (coo.row[kept], coo.col[kept])), shape=binary.shape)


def item_evidence(matrix: sp.csr_matrix) -> np.ndarray:
    """Per item, the users who bought it and at least one other item (co-buyers)."""
    binary = _binary(matrix)
    multi = np.diff(binary.indptr) >= 2
    counts: np.ndarray = np.asarray(binary[multi].sum(axis=0)).ravel().astype(np.int64)
    return counts


def co_item_counts(matrix: sp.csr_matrix) -> np.ndarray:
    """Per item, the number of distinct other items its buyers bought."""
    binary = _binary(matrix)
    co = (binary.T @ binary).tocsr()
    co.setdiag(0)
    co.eliminate_zeros()
    counts: np.ndarray = np.diff(co.indptr).astype(np.int64)
    return counts


def item_components(matrix: sp.csr_matrix) -> np.ndarray:
    """Component label per item of the co-interaction graph (int32), labels numbered by
    the component's first item; items of a single-item component are "isolated"."""
    n_users, n_items = matrix.shape
    # The bipartite graph users -> items; undirected components join items through users.
    size = n_users + n_items
    graph = sp.csr_matrix((np.ones(matrix.nnz, dtype=np.int8),
                           np.asarray(matrix.indices, dtype=np.int64) + n_users,
                           np.append(matrix.indptr, np.full(n_items, matrix.nnz))),
                          shape=(size, size))
    # Imported here, by the builders: scipy.sparse.csgraph brings scipy.sparse.linalg and
    # scipy.linalg (0.1 s) that the service, which imports this module, never calls.
    from scipy.sparse.csgraph import connected_components

    _, labels = connected_components(graph, directed=False)
    return relabel_by_first_item(labels[n_users:])


def relabel_by_first_item(labels: np.ndarray) -> np.ndarray:
    """Component labels renumbered by their first item (int32), so that labels depend
    neither on user order nor on how the components were found."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first, kind="stable"), kind="stable")
    relabelled: np.ndarray = order[inverse.ravel()].astype(np.int32)
    return relabelled


def merge_components(labels: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Component labels of the items (any numbering) after also joining each pair of
    `edges` (m x 2 item positions): the streaming form of item_components, for a builder
    that sees the log a chunk of users at a time. Memory: O(items + edges)."""
    n = labels.size
    # Each item linked to the first item of its current component, plus the new links.
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    root = first[inverse.ravel()]
    rows = np.concatenate([np.arange(n, dtype=np.int64), edges[:, 0].astype(np.int64)])
    cols = np.concatenate([root.astype(np.int64), edges[:, 1].astype(np.int64)])
    graph = sp.csr_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(n, n))
    from scipy.sparse.csgraph import connected_components

    _, merged = connected_components(graph, directed=False)
    return np.asarray(merged, dtype=np.int64)


def isolated(components: np.ndarray) -> np.ndarray:
    """Mask of the items alone in their component: no collaborative evidence."""
    sizes = np.bincount(components)
    return np.asarray(sizes[components] <= 1)


class Evidence:
    """Per-item evidence as loaded from a bundle; bundles built before it have none, and
    every item then counts as having evidence in one component (the old behaviour)."""

    def __init__(self, components: np.ndarray | None, co_users: np.ndarray | None,
                 min_co_users: int = MIN_CO_USERS) -> None:
        self.components = components
        self.co_users = co_users
        self.min_co_users = min_co_users
        self._has = None if components is None else ~isolated(components)
        self._members: tuple[np.ndarray, np.ndarray] | None = None  # built on first use

    def has_evidence(self, item: int) -> bool:
        """Whether anything in the log relates this item to another."""
        return self._has is None or bool(self._has[item])

    def any_evidence(self, items: np.ndarray) -> bool:
        """Whether a history (item positions) holds an item with evidence."""
        if self._has is None:
            return items.size > 0
        return bool(np.any(self._has[items]))

    def rows_with_evidence(self, rows: sp.csr_matrix) -> np.ndarray:
        """`any_evidence` of every row of a user x item matrix, at once (export)."""
        lengths = np.diff(rows.indptr)
        if self._has is None:
            return np.asarray(lengths > 0)
        owner = np.repeat(np.arange(rows.shape[0]), lengths)
        hits = np.bincount(owner, weights=self._has[rows.indices], minlength=rows.shape[0])
        return np.asarray(hits > 0)

    def factors_speak(self, item: int) -> bool:
        """Whether the item has enough co-users for its SVD vector to rank neighbours."""
        return self.co_users is None or int(self.co_users[item]) >= self.min_co_users

    def same_component(self, item: int, candidates: np.ndarray) -> np.ndarray:
        """Mask of the candidates in the item's component (all, without components)."""
        if self.components is None:
            return np.ones(candidates.shape, dtype=bool)
        return np.asarray(self.components[candidates] == self.components[item])

    def members(self, item: int) -> np.ndarray | None:
        """The items of this item's component, ascending (None: no components recorded)."""
        if self.components is None:
            return None
        if self._members is None:
            order = np.argsort(self.components, kind="stable")
            starts = np.searchsorted(self.components[order], np.arange(
                int(self.components.max()) + 2))
            self._members = (order.astype(np.int64), starts)
        order, starts = self._members
        label = int(self.components[item])
        return order[starts[label] : starts[label + 1]]


def users_with_evidence(components: np.ndarray, matrix: sp.csr_matrix) -> np.ndarray:
    """Mask of the users (rows) whose history holds an item with cf evidence."""
    has = ~isolated(components)
    owners = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    per_user = np.bincount(owners, weights=has[matrix.indices], minlength=matrix.shape[0])
    return np.asarray(per_user > 0)


def summary(components: np.ndarray, co_users: np.ndarray, matrix: sp.csr_matrix,
            min_co_users: int = MIN_CO_USERS) -> dict[str, Any]:
    """The manifest's evidence section: how many items and users the model can answer
    with collaborative evidence, and by which measure."""
    users_with = int(np.count_nonzero(users_with_evidence(components, matrix)))
    return summary_counts(components, co_users, int(matrix.shape[0]), users_with,
                          min_co_users)


def summary_counts(components: np.ndarray, co_users: np.ndarray, n_users: int,
                   users_with: int, min_co_users: int = MIN_CO_USERS) -> dict[str, Any]:
    """`summary` from the user counts (the Spark builder counts them in Spark)."""
    has = ~isolated(components)
    sizes = np.bincount(components)
    share = float(has.mean()) if has.size else 1.0
    warning = None
    if share < WARN_SHARE:
        warning = (f"only {share:.0%} of items have collaborative evidence (a user who "
                   "interacted with them and with another item); the rest get content "
                   "neighbours with --items CATALOG, else popular items. A longer log "
                   "(--events LOG) adds evidence; --min-item-interactions 2 keeps items "
                   "with one user out of the model")
    return {
        "items": int(components.size),
        "items_with_cf_evidence": int(has.sum()),
        "items_by_factors": int(np.count_nonzero(has & (co_users >= min_co_users))),
        "items_by_co_occurrence": int(np.count_nonzero(has & (co_users < min_co_users))),
        "users": n_users,
        "users_with_cf_evidence": users_with,
        "components": int(np.count_nonzero(sizes > 1)),
        "largest_component_items": int(sizes.max()) if sizes.size else 0,
        "min_co_users": min_co_users,
        "warning": warning,
        "measure": "an item has cf evidence when a user who interacted with it interacted "
                   "with another item; neighbours stay in its co-interaction component; "
                   "items with fewer than min_co_users co-users (users who interacted with "
                   "them and another item) rank neighbours by co-occurrence",
    }
