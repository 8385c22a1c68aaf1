import itertools
import math

import numpy as np
import pytest

from dd_core.data.sampler import GroupedBatchSampler, MixedBatchSampler, RankBatchSampler


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


def _binomial_interval(n: int, p: float, alpha: float = 1e-6) -> tuple[int, int]:
    """The exact central interval holding a Binomial(n, p) count with probability >= 1 - alpha."""
    logs = [math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p)
            + (n - k) * math.log1p(-p) for k in range(n + 1)]
    cdf = list(itertools.accumulate(math.exp(v) for v in logs))
    lo = next(k for k in range(n + 1) if cdf[k] >= alpha / 2)
    hi = next(k for k in range(n + 1) if cdf[k] >= 1 - alpha / 2)
    return lo, hi


@pytest.mark.parametrize("world_size", [2, 4])
def test_rank_slices_concatenate_to_the_single_process_batch(world_size):
    mixed = lambda s=0: MixedBatchSampler(7, 30, 8, 0.6, seed=4, start_batch=s)  # noqa: E731
    grouped = lambda s=0: GroupedBatchSampler(list(np.linspace(0.5, 2, 30)), 8, seed=4, start_batch=s)  # noqa: E731
    for make in (mixed, grouped):
        for start in (0, 5):  # a resumed run, on any number of ranks, continues the same global batches
            single = _take(make(start), 20)
            slices = [_take(RankBatchSampler(make(start), 8, r, world_size), 20) for r in range(world_size)]
            assert all(len(b) == 8 // world_size for s in slices for b in s)
            assert [sum((s[i] for s in slices), []) for i in range(20)] == single
        assert _take(make(5), 15) == _take(make(), 20)[5:]


def test_labeled_share_holds_across_ranks_and_on_each_rank():
    steps, world_size, ratio = 2000, 4, 0.6
    slices = [_take(RankBatchSampler(MixedBatchSampler(50, 200, 8, ratio, seed=0), 8, r, world_size), steps)
              for r in range(world_size)]
    per_rank = [sum(i < 50 for b in s for i in b) for s in slices]
    lo, hi = _binomial_interval(steps * 2, ratio)
    assert all(lo <= n <= hi for n in per_rank), (per_rank, lo, hi)
    lo, hi = _binomial_interval(steps * 8, ratio)
    assert lo <= sum(per_rank) <= hi, (sum(per_rank), lo, hi)


def test_rank_batch_sampler_rejects_uneven_split_and_bad_rank():
    with pytest.raises(ValueError, match="global batch of 6 images cannot be split evenly over 4 ranks"):
        RankBatchSampler(MixedBatchSampler(5, 5, 6), 6, 0, 4)
    with pytest.raises(ValueError, match="rank must be in"):
        RankBatchSampler(MixedBatchSampler(5, 5, 4), 4, 2, 2)
    with pytest.raises(ValueError, match="global batch 0 has 4 images, expected batch_size 2"):
        _take(RankBatchSampler(MixedBatchSampler(5, 5, 4), 2, 0, 2), 1)
