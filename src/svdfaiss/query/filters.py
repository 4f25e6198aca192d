"""Business filters over catalog columns (category, price, stock) as sets of positions.

Positions run over the model's items, then the catalog-only items. The last FILTER_CACHE
filters are kept: shop traffic repeats them (category pages).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from svdfaiss.content import CATEGORY_COLUMNS
from svdfaiss.errors import InvalidInput, UnsupportedFilter

FILTER_CACHE = 256  # business filters whose item sets are kept
STOCK_COLUMNS = ("in_stock", "instock", "stock")
# Bundles built since the catalog reader normalises stock (svdfaiss.catalog) store booleans
# (null: unknown, never in stock); older bundles stored the catalog's text, read as before.
TRUE_STOCK = (True, 1, "1", "true", "True", "yes")


@dataclass(frozen=True)
class CatalogFilter:
    """Business filters over catalog columns: category, price range, stock."""

    category: str | None = None
    min_price: float | None = None
    max_price: float | None = None
    in_stock: bool | None = None

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.category, self.min_price, self.max_price,
                                           self.in_stock))


NO_FILTER = CatalogFilter()


class CatalogFilters:
    """The positions passing a CatalogFilter, from the catalog's columns, cached."""

    def __init__(self, model: str, catalog: dict[str, np.ndarray], n_catalog: int) -> None:
        self.model = model
        self.catalog = catalog
        self.n_catalog = n_catalog
        self._category_sets: dict[str, np.ndarray] | None = None  # built on first use
        self._cache: dict[CatalogFilter, np.ndarray] = {}  # insertion order: oldest first
        self._lock = threading.Lock()

    def column(self, names: tuple[str, ...], what: str) -> np.ndarray:
        for name in self.catalog:
            if name.lower() in names:
                return self.catalog[name]
        raise UnsupportedFilter(f"model {self.model!r} has no catalog {what} column to filter "
                                f"on; build it with --items CATALOG holding one "
                                f"({' or '.join(names)})")

    def categories(self) -> dict[str, np.ndarray]:
        """Items of each category; a value like "Comedy|Drama" puts the item in both."""
        if self._category_sets is None:
            column = self.column(CATEGORY_COLUMNS, "category")
            members: dict[str, list[int]] = {}
            for index, value in enumerate(column.tolist()):
                if value is None:
                    continue
                for name in str(value).split("|"):
                    members.setdefault(name.strip(), []).append(index)
            self._category_sets = {name: np.asarray(rows, dtype=np.int64)
                                   for name, rows in members.items()}
        return self._category_sets

    def filter_set(self, catalog_filter: CatalogFilter) -> np.ndarray | None:
        """Positions of the items passing the business filters (None: no filter)."""
        if not catalog_filter.active:
            return None
        cached = self._cache.get(catalog_filter)
        if cached is None:
            cached = self._compute(catalog_filter)
            with self._lock:  # queries run on several threads
                while len(self._cache) >= FILTER_CACHE:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[catalog_filter] = cached
        return cached

    def _compute(self, catalog_filter: CatalogFilter) -> np.ndarray:
        low, high = catalog_filter.min_price, catalog_filter.max_price
        if low is not None and high is not None and low > high:
            raise InvalidInput(f"min_price {low:g} is above max_price {high:g}: no item can "
                               "pass; swap them")
        keep = np.ones(self.n_catalog, dtype=bool)
        if catalog_filter.category is not None:
            sets = self.categories()
            if catalog_filter.category not in sets:
                names = sorted(sets)
                shown = ", ".join(repr(c) for c in names[:10]) + (", ..." if len(names) > 10
                                                                  else "")
                raise InvalidInput(f"unknown category {catalog_filter.category!r}: the "
                                   f"catalog of model {self.model!r} has {len(names)} "
                                   f"categories ({shown}); names match exactly, case included")
            in_category = np.zeros(self.n_catalog, dtype=bool)
            in_category[sets[catalog_filter.category]] = True
            keep &= in_category
        if catalog_filter.min_price is not None or catalog_filter.max_price is not None:
            price = np.asarray(self.column(("price",), "price"), dtype=np.float64)
            known = ~np.isnan(price)
            keep &= known
            if catalog_filter.min_price is not None:
                keep &= np.where(known, price, 0) >= catalog_filter.min_price
            if catalog_filter.max_price is not None:
                keep &= np.where(known, price, 0) <= catalog_filter.max_price
        if catalog_filter.in_stock is not None:
            stock = self.column(STOCK_COLUMNS, "in_stock")
            if stock.dtype == np.bool_:
                truthy = stock.astype(bool)
            else:  # nulls make an object array; an old bundle's text goes through TRUE_STOCK
                truthy = np.array([v is True or (not isinstance(v, bool) and v in TRUE_STOCK)
                                   for v in stock.tolist()], dtype=bool)
            keep &= truthy if catalog_filter.in_stock else ~truthy
        result = np.flatnonzero(keep)
        result.flags.writeable = False  # shared by every query with this filter
        return result


def combine(listed: np.ndarray | None, filtered: np.ndarray | None, n_items: int,
            with_new: bool) -> np.ndarray | None:
    """An allow-list and a filter set together (None: everything allowed); model items
    only (positions below n_items) unless `with_new`."""
    if filtered is not None and not with_new:
        filtered = filtered[: int(np.searchsorted(filtered, n_items))]
    if listed is None or filtered is None:
        return filtered if listed is None else listed
    return np.intersect1d(listed, filtered, assume_unique=True)
