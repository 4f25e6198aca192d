"""Similar items by co-occurrence: the users two items share, for items whose SVD vector
says too little (svdfaiss.evidence).

The score of j for item i is the cosine of their binary user columns,
|U_i & U_j| / sqrt(|U_i| |U_j|), in (0, 1]: 1 when the same users interacted with both.
Candidates are the items some user of i also interacted with, so every answer shares a user
with the query and lies in its component.
"""

from __future__ import annotations

import numpy as np

from svdfaiss.query.model import LoadedModel


def co_bought(model: LoadedModel, item: int, k: int, allowed: np.ndarray | None,
              excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The k items sharing the most users with `item` relative to their sizes (cosine),
    ties broken by more users, then the lower position; fewer when fewer exist."""
    by_item = model.item_users()
    users = by_item.indices[by_item.indptr[item] : by_item.indptr[item + 1]]
    rows = model.rows
    starts, ends = rows.indptr[users], rows.indptr[users + 1]
    touched = np.concatenate([rows.indices[a:b] for a, b in zip(starts, ends, strict=True)]
                             or [np.empty(0, dtype=np.int64)]).astype(np.int64)
    candidates, shared = np.unique(touched, return_counts=True)
    keep = ~np.isin(candidates, excluded) & (candidates != item)
    if allowed is not None:
        keep &= np.isin(candidates, allowed)
    candidates, shared = candidates[keep], shared[keep]
    sizes = model.popularity.counts
    cosine = shared / np.sqrt(float(sizes[item]) * sizes[candidates])
    order = np.lexsort((candidates, -sizes[candidates], -cosine))[:k]
    return cosine[order].astype(np.float32), candidates[order]
