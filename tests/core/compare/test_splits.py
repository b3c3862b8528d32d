"""Virtual hospitals: every split is disjoint, covers the collection, and keeps what it promises."""

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.compare.splits import parse_split, split_dirichlet, split_folders, split_iid
from core.errors import ConfigError

labels_strategy = st.lists(st.integers(0, 4), min_size=30, max_size=300)


@settings(max_examples=60, deadline=None)
@given(labels=labels_strategy, hospitals=st.integers(2, 10), seed=st.integers(0, 2**31),
       fraction=st.floats(0.05, 0.5))
def test_iid_split_is_disjoint_and_complete(labels, hospitals, seed, fraction):
    split = split_iid(labels, hospitals, seed=seed, test_fraction=fraction)
    split.check(len(labels))  # raises when an image is missing or in two places
    assert len(split.hospitals) == hospitals
    sizes = [len(h) for h in split.hospitals]
    assert max(sizes) - min(sizes) <= 1  # equal hospitals, as in the paper


@settings(max_examples=40, deadline=None)
@given(labels=st.lists(st.integers(0, 4), min_size=200, max_size=400), hospitals=st.integers(2, 5),
       alpha=st.floats(0.3, 5.0), seed=st.integers(0, 1000))
def test_dirichlet_split_is_disjoint_and_complete(labels, hospitals, alpha, seed):
    try:
        split = split_dirichlet(labels, hospitals, alpha=alpha, seed=seed, test_fraction=0.2)
    except ConfigError as exc:  # a draw that leaves a hospital empty is refused, never silently returned
        assert "without images" in str(exc)
        return
    split.check(len(labels))
    assert all(split.hospitals)


def test_iid_split_keeps_the_class_proportions():
    labels = [0] * 500 + [1] * 100 + [2] * 250 + [3] * 50 + [4] * 100  # APTOS-like skew
    split = split_iid(labels, 10, seed=3, test_fraction=0.2)
    train = sum(len(h) for h in split.hospitals)
    overall = Counter(labels[i] for h in split.hospitals for i in h)
    for hospital in split.hospitals:
        counts = Counter(labels[i] for i in hospital)
        for label, total in overall.items():
            # dealt in turn: each hospital holds its share of every class, to within one image
            assert abs(counts[label] - total / len(split.hospitals)) <= 1
    test = Counter(labels[i] for i in split.test)
    for label, total in Counter(labels).items():
        assert abs(test[label] - 0.2 * total) <= 1
    assert train + len(split.test) == len(labels)


def test_small_dirichlet_alpha_skews_the_labels():
    labels = [k % 5 for k in range(2000)]
    skewed = split_dirichlet(labels, 5, alpha=0.1, seed=1, test_fraction=0.2)
    even = split_dirichlet(labels, 5, alpha=100.0, seed=1, test_fraction=0.2)

    def dominant_share(split):  # the largest share one class takes of a hospital, averaged over hospitals
        return sum(max(Counter(labels[i] for i in h).values()) / len(h) for h in split.hospitals) / 5

    assert dominant_share(skewed) > 0.5
    assert dominant_share(even) < 0.3


def test_folder_split_uses_the_collections_own_hospitals():
    groups = ["hospital_02", "test", "hospital_01", "hospital_01", "test", "hospital_02", "hospital_01"]
    split = split_folders(groups)
    split.check(len(groups))
    assert split.names == ["hospital_01", "hospital_02"]
    assert split.hospitals == [[2, 3, 6], [0, 5]]
    assert split.test == [1, 4]
    with pytest.raises(ConfigError, match="test"):
        split_folders(["a", "b", "a"])
    with pytest.raises(ConfigError, match="two hospital folders"):
        split_folders(["a", "test"])


@pytest.mark.parametrize("text", ["dirichlet", "dirichlet:0", "dirichlet:-1", "dirichlet:x", "random", ""])
def test_bad_split_names_are_refused_with_the_choices(text):
    with pytest.raises(ConfigError, match="iid, dirichlet:ALPHA"):
        parse_split(text)


def test_split_names_parse():
    assert parse_split("iid") == ("iid", None)
    assert parse_split("folders") == ("folders", None)
    assert parse_split("dirichlet:0.5") == ("dirichlet", 0.5)
