import torch

from audiogen.lm import LM, KVCache, named_config


def _model():
    torch.manual_seed(0)
    return LM(named_config("tiny")).eval()


def test_prefill_then_decode_steps_equal_the_full_forward():
    """A prompt prefilled in two pieces (the causal and the masked path), then one eager step and one
    fixed-shape (masked) step per position, give the logits of one full forward."""
    m = _model()
    t = torch.randint(0, 65, (2, 4, 12))
    c, mk = torch.randn(2, 3, 64), torch.tensor([[1, 1, 0], [1, 0, 0]]).bool()
    full = m(t, c, mk)
    for fixed_shape in (False, True):
        cache = m.init_cache(2, 16, "cpu", torch.float32)
        assert isinstance(cache, KVCache) and cache.max_len == 16 and len(cache.layers) == 2
        m.fill_cross_cache(c, mk, cache)
        cross_mask = m.cross_masks(mk)
        m.prefill(t[..., :5], cache, cross_mask, start=0)
        m.prefill(t[..., 5:8], cache, cross_mask, start=5)
        outs = []
        for s in range(8, 12):
            pos = torch.tensor([s])
            if fixed_shape:
                self_mask = torch.arange(16)[None, None, None] <= s
                outs.append(m.decode_step(t[..., s : s + 1], pos, cache, cross_mask, 16, self_mask))
            else:
                outs.append(m.decode_step(t[..., s : s + 1], pos, cache, cross_mask, s + 1))
        torch.testing.assert_close(torch.stack(outs, 2), full[:, :, 8:], atol=1e-5, rtol=0)


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
