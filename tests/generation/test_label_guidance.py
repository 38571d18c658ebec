"""Label guidance: the request's labels (genre, mood, key, instruments) pushed beyond what classifier-free
guidance gives them, against the same request without its label slots (``SamplingParams.label_guidance``)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from audiogen.errors import AudiogenError
from audiogen.generation.pipeline import check_guidance, condition_batch, guided_batch
from audiogen.generation.sampling import SamplingParams, beat_steps, generate_window, guide
from audiogen.models.conditioning import Conditions, without_labels


@pytest.fixture(scope="module")
def labelled_dir(tmp_path_factory, tiny_codec):
    """A random tiny LM with attribute slots for every label and a beat grid, in a model directory."""
    from audiogen.models.conditioning import ConditionerConfig
    from conftest import louder_labels, save_tiny_model

    ccfg = ConditionerConfig(text_encoder="none", genres=["ambient", "rock"], moods=["calm", "dark"],
                             keys=["C major", "A minor"], instruments=["piano", "drums"],
                             bpm_buckets=[60.0, 90.0, 120.0, 150.0], dim=32)

    return save_tiny_model(tmp_path_factory.mktemp("model") / "labelled", tiny_codec, ccfg, beat_harmonics=3,
                           conditioner_init=louder_labels)


@pytest.fixture(scope="module")
def labelled_model(labelled_dir):
    from audiogen.models.checkpoint import load_model

    return load_model(labelled_dir)


REQUEST = Conditions(genre="rock", mood="dark", key="A minor", instruments=["piano"], bpm=90.0)


def test_guide_adds_the_label_push_between_beat_guidance_and_cfg():
    c, n, nolab, u = (torch.tensor([[v]]) for v in (3.0, 1.0, 2.0, 0.0))
    p = SamplingParams(cfg_scale=2.0, beat_guidance=4.0, label_guidance=3.0)
    beat = 1 + 4 * (3 - 1)  # 9: towards the grid
    assert guide(torch.cat([c, n, nolab, u]), p, True, True, True).item() == pytest.approx(2 * (beat + 2 * (3 - 2)))
    assert guide(torch.cat([c, nolab]), p, False, True, False).item() == pytest.approx(3 + 2 * (3 - 2))
    assert guide(torch.cat([c, nolab, u]), p, False, True, True).item() == pytest.approx(2 * (3 + 2 * (3 - 2)))
    assert p.guidance_rows(grid=True) == (True, True, True)
    assert SamplingParams(label_guidance=1.0).guidance_rows(grid=False) == (False, False, True)
    with pytest.raises(AudiogenError, match="label guidance"):
        SamplingParams(label_guidance=float("nan")).validate()


def test_the_contrast_rows_are_the_request_without_its_labels(labelled_model):
    """Text and tempo kept, every label slot empty; the request's own rows unchanged by the extra group."""
    assert without_labels([REQUEST]) == [Conditions(bpm=90.0)]
    conditioner = labelled_model.conditioner
    plain, plain_mask = condition_batch(conditioner, [REQUEST], True, "cpu")
    cond, mask = condition_batch(conditioner, [REQUEST], True, "cpu", no_grid=True, no_labels=True)
    assert cond.shape[0] == 4
    assert torch.equal(cond[:1], plain[:1]) and torch.equal(cond[1:2], plain[:1])  # request, no-grid copy
    assert torch.equal(cond[3:], plain[1:]) and torch.equal(mask[3:], plain_mask[1:])  # unconditional
    only_tempo, only_tempo_mask = conditioner([Conditions(bpm=90.0)])
    assert torch.equal(cond[2:3], only_tempo) and torch.equal(mask[2:3], only_tempo_mask)
    assert int(mask[0].sum()) == 5 and int(mask[2].sum()) == 1  # genre, mood, key, piano, tempo -> tempo


def test_the_contrast_rows_read_the_requests_grid():
    conds = [Conditions(bpm=120.0, genre="rock"), Conditions(genre="rock")]
    steps = beat_steps(conds, 3, 50.0, SamplingParams(beat_guidance=3.0), label_group=True)
    request = steps[:2]
    assert torch.isnan(steps[2:4, 0]).all()  # beat guidance's contrast: no grid
    assert torch.equal(steps[4:6].nan_to_num(-1), request.nan_to_num(-1))  # label guidance's: the request's
    assert torch.isnan(steps[6:, 0]).all()  # unconditional: no grid


def test_label_guidance_is_cfg_against_the_unlabelled_rows(labelled_model):
    """With CFG off, label guidance G decodes exactly as classifier-free guidance G whose "unconditional" rows
    are the request without its labels: the sampler reads the contrast group where it should, and it changes
    the music (the same seed samples other codes than with label guidance off)."""
    lm = labelled_model.lm
    params = SamplingParams(top_k=0, cfg_scale=1.0, label_guidance=3.0)

    def gen():
        return torch.Generator().manual_seed(0)

    cond, mask, step = guided_batch(labelled_model, [REQUEST], params, "cpu")
    assert cond.shape[0] == 2
    ours = generate_window(lm, cond, mask, 40, params, gen(), engine="eager", beat_step=step)
    as_cfg = replace(params, label_guidance=1.0, cfg_scale=3.0)
    # CFG rows normally have no grid; give them the request's, as the label contrast has
    ref_step = torch.cat([step[:1], step[:1]])
    ref = generate_window(lm, cond, mask, 40, as_cfg, gen(), engine="eager", beat_step=ref_step)
    assert torch.equal(ours, ref)
    off = replace(params, label_guidance=1.0)
    c1, m1, s1 = guided_batch(labelled_model, [REQUEST], off, "cpu")
    assert not torch.equal(ours, generate_window(lm, c1, m1, 40, off, gen(), engine="eager", beat_step=s1))


def test_a_request_without_labels_skips_the_contrast_rows():
    params = SamplingParams(label_guidance=3.0)
    assert params.for_conditions([Conditions(text="calm", bpm=90.0)]).label_guidance == 1.0
    assert params.for_conditions([Conditions(text="calm"), Conditions(key="C major")]) is params


def test_a_model_without_label_slots_refuses_label_guidance(tmp_path):
    text_only = {"conditioner": {"attribute_slots": False}, "lm": {}}
    with pytest.raises(AudiogenError, match="takes no labels"):
        check_guidance(text_only, tmp_path, SamplingParams(label_guidance=2.0))
    check_guidance(text_only, tmp_path, SamplingParams(label_guidance=1.0))
    check_guidance({"conditioner": {}, "lm": {}}, tmp_path, SamplingParams(label_guidance=2.0))  # slots: default


def test_label_guidance_at_holds_then_falls_to_one():
    p = SamplingParams(label_guidance=3.0, label_guidance_hold_s=2.0, label_guidance_fade_s=2.0)
    assert [p.label_guidance_at(t) for t in (0.0, 1.99, 2.0, 3.0, 4.0, 30.0)] == pytest.approx([3, 3, 3, 2, 1, 1])
    assert p.fades_labels()
    throughout = replace(p, label_guidance_hold_s=0.0)
    assert not throughout.fades_labels() and throughout.label_guidance_at(30.0) == 3.0
    assert replace(p, label_guidance_fade_s=0.0).label_guidance_at(2.0) == 1.0  # no fade: off at once
    assert not replace(p, label_guidance=1.0).fades_labels()
    for bad in (dict(label_guidance_hold_s=-1.0), dict(label_guidance_fade_s=float("inf"))):
        with pytest.raises(AudiogenError, match="label guidance (hold|fade)"):
            replace(p, **bad).validate()


def _guidance_seen(monkeypatch) -> list:
    """The label guidance :func:`guide` applies at each step from now on (a spy around it)."""
    import audiogen.generation.sampling as sampling

    seen, real = [], sampling.guide

    def spy(logits, params, beat, labels, cfg, label_guidance=None):
        seen.append(params.label_guidance if label_guidance is None else float(label_guidance))
        return real(logits, params, beat, labels, cfg, label_guidance)

    monkeypatch.setattr(sampling, "guide", spy)
    return seen


@pytest.mark.parametrize("engine", ["eager", "static"])
def test_label_guidance_fades_after_the_hold(labelled_model, monkeypatch, engine):
    """Held for 0.2 s of a 50 Hz track, then falling to 1 over 0.2 s: the sampler applies exactly that per step
    (both the eager and the fixed-shape step read it), the frames before the fall are those of guidance held
    throughout, and the take then differs from it."""
    lm = labelled_model.lm
    held = SamplingParams(top_k=0, cfg_scale=1.0, label_guidance=3.0)
    fading = replace(held, label_guidance_hold_s=0.2, label_guidance_fade_s=0.2)
    cond, mask, step = guided_batch(labelled_model, [REQUEST], held, "cpu")
    seen = _guidance_seen(monkeypatch)
    ours = generate_window(lm, cond, mask, 40, fading, torch.Generator().manual_seed(0), engine=engine,
                           beat_step=step, frame_rate=50.0)
    K = lm.cfg.num_codebooks
    assert len(seen) == 40 + K - 1  # one per pattern position
    expected = [3.0 if p < 10 else max(1.0, 3.0 - 2.0 * (p - 10) / 10) for p in range(40 + K - 1)]
    assert seen == pytest.approx(expected)
    ref = generate_window(lm, cond, mask, 40, held, torch.Generator().manual_seed(0), engine=engine, beat_step=step)
    for k in range(K):  # codebook k writes frame p - k at position p: guided as held up to position 10
        assert torch.equal(ours[:, k, : 11 - k], ref[:, k, : 11 - k])
    assert not torch.equal(ours, ref)
    with pytest.raises(AudiogenError, match="frame rate"):
        generate_window(lm, cond, mask, 40, fading, None, engine=engine, beat_step=step)


def test_label_guidance_fade_counts_from_the_prompts_end(labelled_model, monkeypatch):
    lm = labelled_model.lm
    fading = SamplingParams(top_k=0, cfg_scale=1.0, label_guidance=3.0, label_guidance_hold_s=0.2)
    cond, mask, step = guided_batch(labelled_model, [REQUEST], fading, "cpu")
    prompt = torch.randint(0, lm.cfg.cardinality, (1, lm.cfg.num_codebooks, 15))
    seen = _guidance_seen(monkeypatch)
    generate_window(lm, cond, mask, 40, fading, torch.Generator().manual_seed(0), prompt=prompt, engine="eager",
                    beat_step=step, frame_rate=50.0)
    assert seen[:10] == [3.0] * 10 and set(seen[10:]) == {1.0}  # positions 15..24 guided, then off


def test_generate_fades_label_guidance_as_asked(labelled_dir, tmp_path):
    """``audiogen generate --key ... --label-guidance 3 --label-guidance-hold S --label-guidance-fade F``: the job
    samples with that schedule (recorded in the file's metadata), its take differs from guidance held throughout,
    and a hold longer than the take is guidance held throughout, bit for bit."""
    import soundfile as sf

    from audiogen.generation.pipeline import GenerateJob, run_job

    def take(name, **kw):
        job = GenerateJob.from_options("a tune", 1.0, tmp_path / f"{name}.wav", model_dir=labelled_dir,
                                       progress=False, seed=1, key="A minor", label_guidance=3.0, top_k=0, **kw)
        (meta,) = run_job(job)
        return job, meta, sf.read(str(tmp_path / f"{name}.wav"), dtype="float32")[0].tobytes()

    job, meta, fading = take("fading", label_guidance_hold_s=0.1, label_guidance_fade_s=0.1)
    assert job.sampling.label_guidance_hold_s == 0.1 and job.sampling.label_guidance_fade_s == 0.1
    assert meta["sampling"]["label_guidance_hold_s"] == 0.1
    _, _, held = take("held")
    _, _, long_hold = take("long", label_guidance_hold_s=5.0, label_guidance_fade_s=1.0)
    assert fading != held and long_hold == held
    with pytest.raises(AudiogenError, match="label guidance hold"):
        take("bad", label_guidance_hold_s=-1.0)
