"""The attribute registry: one list drives the vocabularies, the encoder's slots, validation and dropout."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from audiogen.errors import AudiogenError
from audiogen.models.conditioning import (ATTRIBUTES, DROP_DRAWS, LABELS, ConditionEncoder, ConditionerConfig, Conditions,
                                   drop_conditions)

CFG = ConditionerConfig(text_encoder="none", genres=["Rock"], moods=["calm"], keys=["C major"],
                        instruments=["piano", "strings"], bpm_buckets=[60.0, 120.0], dim=8,
                        p_drop_attr=0.5, p_drop_text=0.3, p_drop_all=0.1)
FULL = Conditions(text="a", genre="rock", mood="calm", bpm=100.0, key="C major", instruments=["piano"])


def test_every_attribute_is_a_conditions_field_and_every_label_has_a_vocabulary():
    fields = [f.name for f in dataclasses.fields(Conditions)]
    assert fields == ["text", *(a.name for a in ATTRIBUTES)]
    assert CFG.vocab() == {"genre": ["rock"], "mood": ["calm"], "key": ["c major"], "instruments": ["piano", "strings"],
                           "harmony": []}
    assert [a.name for a in LABELS] == list(CFG.vocab())
    draws = [a.draw for a in ATTRIBUTES]
    assert len(set(draws)) == len(draws) and all(2 <= d < DROP_DRAWS for d in draws)


def _old_drop(c: Conditions, cfg: ConditionerConfig, generator: torch.Generator) -> Conditions:
    """drop_conditions as it was before the registry: 7 uniforms per row."""
    p_all, p_text, p_genre, p_mood, p_bpm, p_key, p_inst = torch.rand(1, 7, generator=generator)[0].tolist()
    if p_all < cfg.p_drop_all:
        return Conditions()
    return Conditions(text=None if p_text < cfg.p_drop_text else c.text,
                      genre=None if p_genre < cfg.p_drop_attr else c.genre,
                      mood=None if p_mood < cfg.p_drop_attr else c.mood,
                      bpm=None if p_bpm < cfg.p_drop_attr else c.bpm,
                      key=None if p_key < cfg.p_drop_attr else c.key,
                      instruments=None if p_inst < cfg.p_drop_attr else c.instruments)


def test_dropout_of_one_row_per_generator_is_what_it_was_before_the_registry():
    """Training drops one row per freshly seeded generator (data.CropDataset): the first 7 of the 16 draws
    are the 7 it used to draw, so the same seed drops the same conditions."""
    for seed in range(300):
        new = drop_conditions([FULL], CFG, torch.Generator().manual_seed(seed))[0]
        assert new == _old_drop(FULL, CFG, torch.Generator().manual_seed(seed)), seed


def test_dropout_draws_a_fixed_number_per_row_whatever_the_rows_hold():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    drop_conditions([FULL, Conditions()], CFG, g1)
    torch.rand(2, DROP_DRAWS, generator=g2)
    assert torch.equal(g1.get_state(), g2.get_state())


def test_encoder_slots_follow_the_registry_and_unknown_values_are_refused():
    enc = ConditionEncoder(CFG)
    cond, mask = enc([FULL, Conditions()])
    # genre, mood, key, bpm, then max_instruments instrument slots
    assert cond.shape == (2, 4 + CFG.max_instruments, 8)
    assert mask[0].tolist() == [True] * 5 + [False] * (CFG.max_instruments - 1) and not mask[1].any()
    with pytest.raises(AudiogenError, match="unknown instrument 'kazoo'"):
        CFG.validate_conditions([Conditions(instruments=["kazoo"])])
    with pytest.raises(AudiogenError, match="unknown genre 'polka'"):
        CFG.validate_conditions([Conditions(genre="polka")])
    with pytest.raises(AudiogenError, match="trained without mood conditioning; leave out --mood"):
        dataclasses.replace(CFG, moods=[]).validate_conditions([Conditions(mood="calm")])


def test_an_optional_attribute_has_a_table_and_a_slot_only_in_a_model_with_its_values():
    """harmony came after models were shipped: a model without its values keeps its weights (no table) and its
    condition sequence (no slot), so it loads and plays as before; one with them has a slot before the tempo."""
    torch.manual_seed(0)
    old = ConditionEncoder(CFG)
    assert "tables.harmony.weight" not in old.state_dict()
    cond, _ = old([dataclasses.replace(FULL, harmony="moving")])
    assert cond.shape == (1, 4 + CFG.max_instruments, 8)  # the harmony asked of it has nowhere to go
    with pytest.raises(AudiogenError, match="trained without harmony conditioning; leave out --harmony"):
        CFG.validate_conditions([Conditions(harmony="held")])

    cfg = dataclasses.replace(CFG, harmonies=["moving", "held"])
    enc = ConditionEncoder(cfg)
    assert enc.tables["harmony"].weight.shape == (2, 8)
    held, moving, none = enc([dataclasses.replace(FULL, harmony=h) for h in ("held", "moving", None)])[0]
    assert held.shape == (4 + 1 + CFG.max_instruments, 8)
    # genre, mood, key, harmony, then the tempo: only the harmony slot differs
    table = enc.tables["harmony"].weight
    assert torch.equal(held[3], table[1]) and torch.equal(moving[3], table[0])
    assert torch.equal(held[[0, 1, 2, 4]], moving[[0, 1, 2, 4]]) and not none[3].any()
    with pytest.raises(AudiogenError, match="unknown harmony 'wobbly'; this model knows: moving, held"):
        cfg.validate_conditions([Conditions(harmony="wobbly")])
    assert Conditions.from_row({"caption": "x", "harmony": "held"}).harmony == "held"
    assert Conditions.from_row({"caption": "x", "harmony": ""}).harmony is None


def test_the_stream_and_the_dataset_read_the_attributes_from_the_registry():
    from audiogen.data.loader import CONDITION_COLUMNS
    from audiogen.generation.stream import CONDITION_FIELDS, StreamState

    assert CONDITION_FIELDS == ("text", *(a.name for a in ATTRIBUTES), "intensity")
    assert tuple(f.name for f in dataclasses.fields(StreamState)) == CONDITION_FIELDS
    assert CONDITION_COLUMNS == ("caption", *(a.name for a in ATTRIBUTES))
    folded = StreamState(text="calm", genre="rock", instruments=("piano",)).conditions(fold=("genre", "instruments"))
    assert folded == Conditions(text="calm, rock, piano")


def test_a_key_is_one_value_however_its_tonic_is_spelled():
    """A score's key signature says "Eb major", prep's estimator "D# major": one vocabulary entry, and a
    request in either spelling reads the same slot."""
    from audiogen.models.conditioning import build_vocab

    assert build_vocab(["Eb major", "D# major", "eb  Major", "C minor", "Bb minor", "A# minor"]) == \
        ["d# major", "a# minor", "c minor"]
    cfg = dataclasses.replace(CFG, keys=["D# major", "C major"])
    cfg.validate_conditions([Conditions(key="Eb major"), Conditions(key="d# MAJOR")])
    with pytest.raises(AudiogenError, match="unknown key"):
        cfg.validate_conditions([Conditions(key="E major")])
    enc = ConditionEncoder(cfg)
    flat, sharp = enc([Conditions(key="Eb major")])[0], enc([Conditions(key="D# major")])[0]
    assert torch.equal(flat, sharp) and not torch.equal(flat, enc([Conditions(key="C major")])[0])
    assert build_vocab(["rock", "b minor", "bb king"]) == ["b minor", "bb king", "rock"]  # only keys are respelled
    assert build_vocab(["Cb minor", "B minor", "E# major"]) == ["b minor", "f major"]  # every spelling prep parses
