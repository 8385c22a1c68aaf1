import itertools

import numpy as np
import pytest

from dd_core.data.sampler import GroupedBatchSampler, MixedBatchSampler


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_grouped_batches_never_mix_wide_and_tall():
    ratios = [0.5, 2.0, 1.5, 0.7, 1.0, 0.6, 1.2, 0.9]
    wide = {i for i, r in enumerate(ratios) if r >= 1}
    for batch in _take(GroupedBatchSampler(ratios, 2, seed=3), 40):
        assert len(batch) == 2 and len({i in wide for i in batch}) == 1


def test_grouped_batches_cover_every_image_each_epoch_and_are_deterministic():
    ratios = [1.0] * 12
    batches = _take(GroupedBatchSampler(ratios, 4, seed=1), 3)
    assert sorted(i for b in batches for i in b) == list(range(12))
    assert batches == _take(GroupedBatchSampler(ratios, 4, seed=1), 3)
    assert batches != _take(GroupedBatchSampler(ratios, 4, seed=2), 3)


def test_grouped_resume_yields_what_an_uninterrupted_run_would():
    ratios = list(np.linspace(0.5, 2, 30))
    full = _take(GroupedBatchSampler(ratios, 4, seed=0), 25)
    assert _take(GroupedBatchSampler(ratios, 4, seed=0, start_batch=10), 15) == full[10:]


def test_grouped_rejects_empty_and_bad_batch_size():
    with pytest.raises(ValueError, match="empty"):
        GroupedBatchSampler([], 2)
    with pytest.raises(ValueError, match="batch_size"):
        GroupedBatchSampler([1.0], 0)


def test_mixed_batches_hold_the_expected_ratio():
    sampler = MixedBatchSampler(num_labeled=50, num_pseudo=200, batch_size=10, labeled_ratio=0.6, seed=0)
    batches = _take(sampler, 2000)
    labeled = sum(i < 50 for b in batches for i in b) / 20000
    assert abs(labeled - 0.6) < 0.01
    assert all(len(b) == 10 and all(0 <= i < 250 for i in b) for b in batches)
    assert {i for b in batches for i in b} == set(range(250))


def test_mixed_resume_and_labeled_only_case():
    full = _take(MixedBatchSampler(5, 7, 4, 0.6, seed=9), 12)
    assert _take(MixedBatchSampler(5, 7, 4, 0.6, seed=9, start_batch=5), 7) == full[5:]
    assert all(i < 5 for b in _take(MixedBatchSampler(5, 0, 4, 0.6), 10) for i in b)
    with pytest.raises(ValueError, match="labeled_ratio"):
        MixedBatchSampler(5, 5, 4, 1.5)
    with pytest.raises(ValueError, match="labeled set is empty"):
        MixedBatchSampler(0, 5, 4, 0.6)
