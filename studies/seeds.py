"""The seed formulas of a campaign, the same for both backends.

Search trial n runs with seed `(S * 1000003 + n) mod 2**31`, confirm seed k with
`(S * 1000003 + 10**9 + k) mod 2**31`, where S is the campaign seed: the same seeds for every
optimizer, never the same for search and confirm. Sweep seed k (`sweep_seed`) is confirm seed k:
every value of a controlled sweep runs on the same seeds, and the run at the best config's own
value repeats its confirm run. The sampler of optimizer i in worker w is
seeded with `(S * 7919 + i * 104729 + w * 15485863) mod 2**31` (the Ray backend's one searcher
per optimizer is worker 0).
"""

from __future__ import annotations

__all__ = [
    "CONFIRM_OFFSET",
    "SEED_STRIDE",
    "confirm_seed",
    "sampler_seed",
    "search_seed",
    "sweep_seed",
]

SEED_STRIDE = 1_000_003
CONFIRM_OFFSET = 10**9


def search_seed(campaign_seed: int, trial_number: int) -> int:
    return (campaign_seed * SEED_STRIDE + trial_number) % 2**31


def confirm_seed(campaign_seed: int, index: int) -> int:
    return (campaign_seed * SEED_STRIDE + CONFIRM_OFFSET + index) % 2**31


def sweep_seed(campaign_seed: int, index: int) -> int:
    """Seed index k of a controlled sweep (`studies.sweep`): confirm seed k, on purpose."""
    return confirm_seed(campaign_seed, index)


def sampler_seed(campaign_seed: int, optimizer_index: int, worker_index: int = 0) -> int:
    return (campaign_seed * 7919 + optimizer_index * 104729 + worker_index * 15485863) % 2**31
