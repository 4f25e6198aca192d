"""The query core behind `Recommender`: one module a job, none of them HTTP or CLI.

- `model`: the loaded bundle (arrays, id maps, indexes, catalog columns); no search logic.
- `retrieval`: top-k over one index with allow/deny lists, exactness retries, exact scoring.
- `banded`: the exactly scored head of a banded recommendation index and its norm bound.
- `filters`: business filters over catalog columns, and allow-lists combined with them.
- `popularity`: interaction counts and the popular fallback.
- `vectors`: query vectors of users, baskets and live rows (fold-in).
- `similar`: similar items, one strategy per mode (cf, content, hybrid, stored neighbours).
- `recommend`: recommendations for users and baskets, similar users, scores.
- `explain`: which history items make a recommendation.
- `catalog_search`: title search over the catalog.
"""
