import numpy as np
import pyarrow.csv as pacsv
import pytest

from svdfaiss.errors import InvalidInput
from svdfaiss.synthetic import SampleSpec, generate, write_sample


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    a = write_sample(SampleSpec(users=300, items=100, events=3000, seed=7), tmp_path / "a")
    b = write_sample(SampleSpec(users=300, items=100, events=3000, seed=7), tmp_path / "b")
    c = write_sample(SampleSpec(users=300, items=100, events=3000, seed=8), tmp_path / "c")
    assert a.events.read_bytes() == b.events.read_bytes()
    assert a.catalog.read_bytes() == b.catalog.read_bytes()
    assert a.events.read_bytes() != c.events.read_bytes()


def test_default_sample_has_the_promised_shape():
    spec = SampleSpec()
    events, catalog = generate(spec)
    assert events.num_rows == spec.events
    users = events["user_id"].to_numpy(zero_copy_only=False)
    _, per_user = np.unique(users, return_counts=True)
    assert per_user.size == spec.users
    assert abs((per_user == 1).mean() - spec.single_event_share) < 0.02
    assert catalog.num_rows == spec.items
    assert set(catalog.column_names) == {"item_id", "title", "category", "price", "in_stock"}
    assert 0.8 < np.mean(catalog["in_stock"].to_numpy()) < 0.95
    ids = catalog["item_id"].to_pylist()
    assert len(set(ids)) == spec.items
    assert any(i.startswith("0") for i in ids) and all(len(i) == 10 for i in ids)


def test_popularity_is_long_tailed():
    events, _ = generate(SampleSpec())
    _, counts = np.unique(events["item_id"].to_numpy(zero_copy_only=False), return_counts=True)
    counts = np.sort(counts)[::-1]
    top_share = counts[: counts.size // 10].sum() / counts.sum()
    assert top_share > 0.4  # the top 10% of items draw a large share of events


def test_explicit_sample_has_ratings_1_to_5(tmp_path):
    files = write_sample(SampleSpec(users=200, items=50, events=1000, explicit=True), tmp_path)
    table = pacsv.read_csv(files.events)
    ratings = table["rating"].to_numpy()
    assert set(np.unique(ratings)) <= {1.0, 2.0, 3.0, 4.0, 5.0}


@pytest.mark.parametrize("spec", [SampleSpec(users=10, events=5), SampleSpec(items=1),
                                  SampleSpec(categories=0)])
def test_impossible_specs_are_refused(spec):
    with pytest.raises(InvalidInput):
        generate(spec)


def test_every_item_gets_an_event():
    spec = SampleSpec(users=500, items=3000, events=6000, every_item=True)
    events, _ = generate(spec)
    assert len(set(events["item_id"].to_pylist())) == 3000
    with pytest.raises(InvalidInput, match="--every-item"):
        generate(SampleSpec(users=10, items=100, events=50, every_item=True))
