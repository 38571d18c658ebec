import torch
from hypothesis import given, settings, strategies as st

from audiogen.models.patterns import DelayPattern


@settings(max_examples=50, deadline=None)
@given(K=st.integers(1, 8), T=st.integers(1, 40), B=st.integers(1, 3))
def test_delay_pattern_round_trips_and_lags_codebook_k_by_k(K, T, B):
    delay = DelayPattern(K, special=50)
    codes = torch.randint(0, 50, (B, K, T))
    pat = delay.build(codes)
    assert pat.shape == (B, K, delay.positions(T)) == (B, K, T + K - 1)
    for k in range(K):
        assert (pat[:, k, :k] == 50).all()
        assert (pat[:, k, k + T :] == 50).all()
        assert torch.equal(pat[:, k, k : k + T], codes[:, k])
    assert torch.equal(delay.revert(pat), codes)
    assert delay.frames(pat.shape[-1]) == T


@settings(max_examples=30, deadline=None)
@given(K=st.integers(1, 6), T=st.integers(1, 20))
def test_frame_at_names_the_frame_each_codebook_holds(K, T):
    delay = DelayPattern(K, special=9)
    codes = torch.randint(0, 9, (1, K, T))
    pat = delay.build(codes)
    delays = delay.delays()
    for p in range(pat.shape[-1]):
        frame = delay.frame_at(p, delays)
        for k in range(K):
            f = int(frame[k])
            assert int(pat[0, k, p]) == (int(codes[0, k, f]) if 0 <= f < T else 9)


def test_revert_of_a_longer_buffer_takes_the_first_frames():
    delay = DelayPattern(3, special=7)
    codes = torch.randint(0, 7, (2, 3, 5))
    buffer = torch.full((2, 3, 20), 7)
    buffer[..., : delay.positions(5)] = delay.build(codes)
    assert torch.equal(delay.revert(buffer, frames=5), codes)


def test_mask_pattern_and_inputs_are_the_pattern_shifted_with_bos():
    delay = DelayPattern(2, special=5)
    mask = torch.tensor([[[True, True, False], [True, True, False]]])
    assert delay.build(mask, fill=False).tolist() == [[[True, True, False, False], [False, True, True, False]]]
    pat = delay.build(torch.tensor([[[1, 2, 3], [4, 0, 2]]]))
    assert pat.tolist() == [[[1, 2, 3, 5], [5, 4, 0, 2]]]
    assert delay.inputs(pat).tolist() == [[[5, 1, 2, 3], [5, 5, 4, 0]]]
