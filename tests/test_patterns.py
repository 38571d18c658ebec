import torch
from hypothesis import given, settings, strategies as st

from audiogen.patterns import delay_pattern, undo_delay_pattern, parallel_pattern, undo_parallel_pattern


@settings(max_examples=50, deadline=None)
@given(K=st.integers(1, 8), T=st.integers(1, 40), B=st.integers(1, 3))
def test_delay_pattern_round_trips_and_lags_codebook_k_by_k(K, T, B):
    codes = torch.randint(0, 50, (B, K, T))
    pat = delay_pattern(codes, special=50)
    assert pat.shape == (B, K, T + K - 1)
    for k in range(K):
        assert (pat[:, k, :k] == 50).all()
        assert (pat[:, k, k + T :] == 50).all()
    assert torch.equal(undo_delay_pattern(pat), codes)


@settings(max_examples=20, deadline=None)
@given(K=st.integers(1, 8), T=st.integers(1, 40))
def test_parallel_pattern_round_trips(K, T):
    codes = torch.randint(0, 50, (1, K, T))
    assert torch.equal(undo_parallel_pattern(parallel_pattern(codes, 50)), codes)
