"""How much co-purchase evidence each item has, from a users x items matrix.

A similar-items answer for item i can only rest on the users who bought i *and something
else*. On a sparse purchase log many items have none: their SVD vectors are built from
almost nothing, and unit-normalising them turns noise into confident neighbours
(docs/evaluation.md, "Similar items on a sparse purchase log"). These measures let a
builder or a recommender tell those items apart:

- `item_evidence`: per item, the number of users who bought it and at least one other item;
- `co_item_counts`: per item, the number of distinct other items bought by its buyers;
- `components`: per item, the connected component of the co-purchase graph (items linked
  when one user bought both); an item nobody co-bought is a component of its own.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components


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


def components(matrix: sp.csr_matrix) -> np.ndarray:
    """Connected component of each item in the co-purchase graph, labels 0..n-1 in order of
    each component's first item; an item without co-buyers has a label of its own."""
    binary = _binary(matrix)
    n_users, n_items = binary.shape
    # The bipartite users + items graph links the same items as the co-purchase graph,
    # without its items x items product.
    if n_users == 0:
        return np.arange(n_items, dtype=np.int64)
    # users are nodes 0..n_users-1, items n_users.. (each user linked to their items)
    graph = sp.csr_matrix((np.ones(binary.nnz), (np.repeat(np.arange(n_users),
                                                           np.diff(binary.indptr)),
                                                 binary.indices + n_users)),
                          shape=(n_users + n_items, n_users + n_items))
    _, labels = connected_components(graph, directed=False)
    items = labels[n_users:]
    _, first, relabelled = np.unique(items, return_index=True, return_inverse=True)
    # number components by their first item, so labels are stable and readable
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[relabelled.ravel()]
