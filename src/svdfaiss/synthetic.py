"""Generated sample data with planted structure: the default input of the demo and the tests.

Users have tastes over categories, items of a category are bought together, popularity is
Zipf-like and a large share of users have one event, as in the Amazon Electronics log. The
ground truth (each item's category, each user's favourite categories) is written to the
catalog so tests can check that the model recovers it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from svdfaiss.errors import InvalidInput

CATEGORIES: tuple[tuple[str, str], ...] = (
    ("audio", "Headphones"),
    ("cameras", "Camera"),
    ("computers", "Laptop"),
    ("phones", "Smartphone"),
    ("tv", "Television"),
    ("gaming", "Controller"),
    ("storage", "SSD"),
    ("networking", "Router"),
    ("printers", "Printer"),
    ("wearables", "Smartwatch"),
    ("smart-home", "Smart Plug"),
    ("accessories", "Cable"),
    ("tablets", "Tablet"),
    ("drones", "Drone"),
    ("car", "Dash Cam"),
    ("office", "Desk Lamp"),
    ("kitchen", "Coffee Maker"),
    ("books", "Guidebook"),
    ("music", "Vinyl Record"),
    ("outdoor", "Flashlight"),
)
ADJECTIVES = ("Compact", "Pro", "Ultra", "Classic", "Wireless", "Portable", "Smart", "Mini")

PRIMARY_SHARE = 0.75
SECONDARY_SHARE = 0.20  # the rest of a user's events follow global popularity (noise)


@dataclass(frozen=True)
class SampleSpec:
    """Size and shape of a generated sample."""

    users: int = 5_000
    items: int = 2_000
    events: int = 100_000
    categories: int = 12
    seed: int = 42
    single_event_share: float = 0.4
    explicit: bool = False
    every_item: bool = False  # each item sold at least once (else the Zipf tail goes unsold)

    def validate(self) -> None:
        if self.users < 2 or self.items < 2:
            raise InvalidInput("synth: need at least 2 users and 2 items")
        if self.events < self.users:
            raise InvalidInput(
                f"synth: --events ({self.events}) must be at least --users ({self.users}): "
                "every user has at least one event"
            )
        if not 1 <= self.categories <= self.items:
            raise InvalidInput(f"synth: --categories must be in 1..{self.items}")
        if self.every_item and self.events < self.items:
            raise InvalidInput(f"synth: --every-item needs --events ({self.events}) >= "
                               f"--items ({self.items})")
        if not 0.0 <= self.single_event_share <= 1.0:
            raise InvalidInput("synth: --single-event-share must be in [0, 1]")


@dataclass(frozen=True)
class SampleFiles:
    """Paths written by `write_sample`."""

    events: Path
    catalog: Path
    rows: int


def _category_names(n: int) -> list[tuple[str, str]]:
    base = list(CATEGORIES)
    while len(base) < n:
        i = len(base)
        base.append((f"category-{i:03d}", f"Gadget {i}"))
    return base[:n]


def _zero_padded(values: np.ndarray, width: int, prefix: str = "") -> pa.Array:
    strings = pc.utf8_lpad(pc.cast(pa.array(values), pa.string()), width=width, padding="0")
    if prefix:
        strings = pc.binary_join_element_wise(prefix, strings, "")
    return strings


def _distinct_codes(rng: np.random.Generator, n: int, high: int) -> np.ndarray:
    """n distinct random integers below high, in random order (no permutation of high)."""
    codes = np.unique(rng.integers(0, high, int(n * 1.1) + 16))
    while codes.size < n:
        codes = np.unique(np.concatenate([codes, rng.integers(0, high, n)]))
    return rng.permutation(codes)[:n]


def _events_per_user(spec: SampleSpec, rng: np.random.Generator) -> np.ndarray:
    """Events per user: a share with exactly one, the rest heavy-tailed (Pareto)."""
    counts = np.ones(spec.users, dtype=np.int64)
    n_single = round(spec.single_event_share * spec.users)
    extra = spec.events - spec.users
    active = rng.permutation(spec.users)[n_single:]
    if extra > 0:
        if active.size == 0:
            active = np.arange(spec.users)
        appetite = rng.pareto(1.2, size=active.size) + 1.0
        counts[active] += rng.multinomial(extra, appetite / appetite.sum())
    return counts


def generate(spec: SampleSpec) -> tuple[pa.Table, pa.Table]:
    """Return (events, catalog) tables for a spec; the same spec always gives the same data."""
    spec.validate()
    rng = np.random.default_rng(spec.seed)
    n_cat = spec.categories
    names = _category_names(n_cat)

    # Catalog: every category has items, sizes mildly skewed; Zipf popularity overall.
    size_weight = 1.0 / np.sqrt(np.arange(1, n_cat + 1))
    item_cat = np.concatenate(
        [np.arange(n_cat), rng.choice(n_cat, spec.items - n_cat, p=size_weight / size_weight.sum())]
    )
    rng.shuffle(item_cat)
    popularity = 1.0 / rng.permutation(np.arange(1, spec.items + 1)).astype(np.float64)

    # Sampling an item of category c: items sorted by category, each category's CDF scaled to
    # [c, c + 1), so one searchsorted of (c + uniform) picks an item of c by popularity.
    by_cat = np.argsort(item_cat, kind="stable")
    cat_sorted = item_cat[by_cat]
    pop_sorted = popularity[by_cat]
    cat_total = np.bincount(cat_sorted, weights=pop_sorted, minlength=n_cat)
    cum = np.cumsum(pop_sorted)
    cat_start_cum = np.concatenate([[0.0], np.cumsum(cat_total)])[cat_sorted]
    within_cdf = cat_sorted + (cum - cat_start_cum) / cat_total[cat_sorted]
    global_cdf = cum / cum[-1]

    # Users: a primary and a different secondary category, chosen by category popularity.
    cat_p = cat_total / cat_total.sum()
    primary = rng.choice(n_cat, spec.users, p=cat_p)
    secondary = (primary + rng.integers(1, max(n_cat, 2), spec.users)) % max(n_cat, 1)

    counts = _events_per_user(spec, rng)
    event_user = np.repeat(np.arange(spec.users), counts)
    rng.shuffle(event_user)
    n = event_user.size
    draw = rng.random(n)
    event_cat = np.where(
        draw < PRIMARY_SHARE,
        primary[event_user],
        np.where(draw < PRIMARY_SHARE + SECONDARY_SHARE, secondary[event_user], -1),
    )
    u = rng.random(n)
    targeted = event_cat >= 0
    pos = np.empty(n, dtype=np.int64)
    pos[targeted] = np.searchsorted(within_cdf, event_cat[targeted] + u[targeted], side="right")
    pos[~targeted] = np.searchsorted(global_cdf, u[~targeted], side="right")
    event_item = by_cat[np.minimum(pos, spec.items - 1)]
    if spec.every_item:
        slots = rng.choice(n, spec.items, replace=False)
        event_item[slots] = rng.permutation(spec.items)
        event_cat[slots] = item_cat[event_item[slots]]

    start = 1_700_000_000
    timestamps = np.sort(rng.integers(start, start + 365 * 86_400, n))

    user_ids = _zero_padded(np.arange(1, spec.users + 1), len(str(spec.users)), prefix="U")
    # Item ids are digit strings with leading zeros (like ISBNs) to prove they survive as text.
    item_codes = _distinct_codes(rng, spec.items, 10**9)
    item_ids = _zero_padded(item_codes, 10)

    columns: dict[str, pa.Array] = {
        "user_id": user_ids.take(pa.array(event_user)),
        "item_id": item_ids.take(pa.array(event_item)),
    }
    if spec.explicit:
        affinity = np.where(
            event_cat == primary[event_user],
            4.3,
            np.where(event_cat == secondary[event_user], 3.7, 2.8),
        )
        quality = rng.normal(0.0, 0.4, spec.items)[event_item]
        rating = np.clip(np.rint(affinity + quality + rng.normal(0.0, 0.7, n)), 1, 5)
        columns["rating"] = pa.array(rating.astype(np.float64))
    else:
        columns["quantity"] = pa.array(rng.geometric(0.8, n).astype(np.int64))
    columns["timestamp"] = pa.array(timestamps)
    events = pa.table(columns)

    adjective = np.array(ADJECTIVES)[rng.integers(0, len(ADJECTIVES), spec.items)]
    nouns = np.array([noun for _, noun in names])[item_cat]
    titles = [f"{a} {b} {i + 1}" for i, (a, b) in enumerate(zip(adjective, nouns, strict=True))]
    base_price = rng.uniform(15, 400, n_cat)[item_cat]
    price = np.round(base_price * rng.lognormal(0.0, 0.35, spec.items), 2)
    catalog = pa.table(
        {
            "item_id": item_ids,
            "title": pa.array(titles),
            "category": pa.array(np.array([name for name, _ in names])[item_cat]),
            "price": pa.array(price),
            "in_stock": pa.array(rng.random(spec.items) < 0.9),
        }
    )
    return events, catalog


def write_sample(spec: SampleSpec, out_dir: Path) -> SampleFiles:
    """Write `events.csv` and `items.csv` into out_dir (created if needed)."""
    events, catalog = generate(spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    options = pacsv.WriteOptions(quoting_style="needed")
    events_path = out_dir / "events.csv"
    catalog_path = out_dir / "items.csv"
    pacsv.write_csv(events, events_path, write_options=options)
    pacsv.write_csv(catalog, catalog_path, write_options=options)
    return SampleFiles(events=events_path, catalog=catalog_path, rows=events.num_rows)


@dataclass(frozen=True)
class TastePopulation:
    """Users with a known favourite category, for simulated experiments: the true
    preference is a click probability, `favourite_click` for an item of the user's
    favourite category and `other_click` for any other (svdfaiss.outcomes is tested by
    showing these users two models' answers and letting them click)."""

    users: list[str]
    items: list[str]
    favourite: np.ndarray  # per user: a category
    category: np.ndarray  # per item: a category
    favourite_click: float = 0.12
    other_click: float = 0.03

    def __post_init__(self) -> None:
        object.__setattr__(self, "_positions", {item: n for n, item in enumerate(self.items)})

    def click_probability(self, user: int, item_id: str) -> float:
        """The chance that user number `user` clicks an item shown to them."""
        item: int | None = self._positions.get(item_id)  # type: ignore[attr-defined]
        if item is None:
            return self.other_click
        return (self.favourite_click if self.category[item] == self.favourite[user]
                else self.other_click)

    def write_logs(self, out_dir: Path, per_user: int = 6, seed: int = 0,
                   ) -> tuple[Path, Path]:
        """Two training logs of the same users and items: `tastes.csv`, each user's
        purchases drawn from their favourite category (the true tastes), and
        `noise.csv`, drawn from the whole catalog at random (no taste at all)."""
        rng = np.random.default_rng(seed)
        out_dir.mkdir(parents=True, exist_ok=True)
        by_category = {c: np.flatnonzero(self.category == c) for c in np.unique(self.category)}
        tastes, noise = ["user_id,item_id"], ["user_id,item_id"]
        for n, user in enumerate(self.users):
            own = by_category[self.favourite[n]]
            for item in rng.choice(own, min(per_user, own.size), replace=False):
                tastes.append(f"{user},{self.items[item]}")
            for item in rng.choice(len(self.items), per_user, replace=False):
                noise.append(f"{user},{self.items[item]}")
        paths = out_dir / "tastes.csv", out_dir / "noise.csv"
        for path, lines in zip(paths, (tastes, noise), strict=True):
            path.write_text("\n".join(lines) + "\n")
        return paths


def taste_population(users: int = 600, items: int = 200, categories: int = 10,
                     seed: int = 0) -> TastePopulation:
    """A population whose every user prefers one category (uniformly drawn)."""
    if users < 1 or items < categories or categories < 1:
        raise InvalidInput("taste_population: need users >= 1 and items >= categories >= 1")
    rng = np.random.default_rng(seed)
    return TastePopulation(users=[f"S{n:05d}" for n in range(users)],
                           items=[f"P{n:04d}" for n in range(items)],
                           favourite=rng.integers(0, categories, users),
                           category=np.arange(items) % categories)
