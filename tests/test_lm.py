import torch

from audiogen.lm import LM, named_config


def _model():
    torch.manual_seed(0)
    return LM(named_config("tiny")).eval()


def test_cached_incremental_decoding_equals_full_forward():
    m = _model()
    t = torch.randint(0, 65, (2, 4, 12))
    c, mk = torch.randn(2, 3, 64), torch.tensor([[1, 1, 0], [1, 0, 0]]).bool()
    full = m(t, c, mk)
    cache = m.init_cache(2, 12, "cpu", torch.float32)
    outs = [m(t[..., :5], c, mk, cache=cache, start=0)]
    outs += [m(t[..., s : s + 1], c, mk, cache=cache, start=s) for s in range(5, 12)]
    torch.testing.assert_close(torch.cat(outs, 2), full, atol=1e-5, rtol=0)


def test_all_false_mask_row_ignores_condition_and_is_finite():
    m = _model()
    t = torch.randint(0, 65, (1, 4, 6))
    mk = torch.zeros(1, 3, dtype=torch.bool)
    a = m(t, torch.randn(1, 3, 64), mk)
    b = m(t, torch.zeros(1, 3, 64), mk)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)


def test_different_conditions_give_different_logits():
    m = _model()
    t = torch.randint(0, 65, (1, 4, 6))
    mk = torch.ones(1, 3, dtype=torch.bool)
    assert not torch.allclose(m(t, torch.randn(1, 3, 64), mk), m(t, torch.randn(1, 3, 64), mk))
