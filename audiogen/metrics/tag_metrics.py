"""Conditioning metrics from a tagger's outputs (MusicGen's KL and per-prompt agreement, with musicnn).

MusicGen (Copet et al. 2023) measures how well generations follow their text by running a
pretrained classifier on each generated clip and on the reference clip that shares its
text, and reporting the KL divergence between the two label distributions. We do the same
with a musicnn tagger (:mod:`audiogen.metrics.tagger`)::

    gen = np.stack([tagger.tag_probabilities(w, sr) for w in generated])   # [N, 50]
    ref = np.stack([tagger.tag_probabilities(w, sr) for w in references])  # [N, 50], same order
    paired_kl(ref, gen)          # mean over pairs of KL(ref || gen); lower is closer
    set_kl(ref, gen)             # KL between the two sets' mean tag distributions (unpaired)
    tag_agreement(gen, tagger.labels, [["piano"], ["rock", "guitar"]], k=5)

musicnn's outputs are independent sigmoids (several tags can be on at once); to compare
them as distributions each clip's vector is normalised to sum to 1 over the tags, which
is what treating a multi-label classifier's scores as "label probabilities" amounts to.
"""

from __future__ import annotations

import numpy as np

from audiogen.errors import AudiogenError

EPS = 1e-6

#: words a prompt may use -> the tagger tags that count as agreeing with it
SYNONYMS = {
    "strings": ("strings", "violin", "cello"),
    "string quartet": ("strings", "violin", "cello"),
    "violin": ("violin", "strings"),
    "cello": ("cello", "strings"),
    "vocals": ("vocals", "vocal", "voice", "singing"),
    "voice": ("voice", "vocal", "vocals", "singing"),
    "electronic": ("electronic", "electronica", "electro", "techno", "synth"),
    "drums": ("drums", "beat", "beats"),
    "calm": ("soft", "quiet", "slow", "Mellow", "chill", "chillout"),
    "energetic": ("fast", "loud", "party"),
    "sad": ("sad",),
    "happy": ("happy",),
}


def _as_distributions(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 2 or not np.isfinite(p).all() or (p < 0).any():
        raise AudiogenError(f"tag probabilities must be finite, non-negative, shaped [clips, tags]; got {p.shape}")
    p = p + EPS
    return p / p.sum(axis=1, keepdims=True)


def kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``p, q: [N, K]`` tag scores -> ``[N]`` KL(p_i || q_i) in nats, each row normalised to a distribution."""
    p, q = _as_distributions(p), _as_distributions(q)
    if p.shape != q.shape:
        raise AudiogenError(f"reference and generated tag arrays differ in shape: {p.shape} vs {q.shape}")
    return (p * np.log(p / q)).sum(axis=1)


def paired_kl(ref: np.ndarray, gen: np.ndarray) -> float:
    """Mean over pairs of KL(ref_i || gen_i): ``ref, gen: [N, K]``, row i of each made from the same prompt."""
    return float(kl_rows(ref, gen).mean())


def set_kl(ref: np.ndarray, gen: np.ndarray) -> float:
    """KL between the mean tag distributions of two unpaired sets: ``ref: [N, K]``, ``gen: [M, K]``."""
    r = _as_distributions(ref).mean(axis=0, keepdims=True)
    g = _as_distributions(gen).mean(axis=0, keepdims=True)
    return float(kl_rows(r, g)[0])


def matching_tags(word: str, labels: tuple[str, ...]) -> tuple[str, ...]:
    """The tagger tags that agree with a prompt ``word`` (case-insensitive; :data:`SYNONYMS` widen it)."""
    by_lower = {lab.lower(): lab for lab in labels}
    wanted = SYNONYMS.get(word.lower(), (word,))
    return tuple(by_lower[w.lower()] for w in wanted if w.lower() in by_lower)


def tag_agreement(gen: np.ndarray, labels: tuple[str, ...], prompts: list[list[str]], k: int = 5) -> dict:
    """Per-prompt tag agreement: is each requested word found among the clip's top ``k`` tags?

    ``gen: [N, K]`` tag probabilities; ``prompts[i]``: the words clip i was asked for
    (genre, mood, instruments). Words no tag can express are listed, not scored.
    Returns ``{"agreement": fraction of scored words found, "per_clip": [...], "unscored": [...]}``.
    """
    gen = np.asarray(gen)
    if gen.ndim != 2 or gen.shape[0] != len(prompts) or gen.shape[1] != len(labels):
        raise AudiogenError(f"need one tag row per prompt and one column per label: {gen.shape} vs "
                            f"{len(prompts)} prompts, {len(labels)} labels")
    hits = scored = 0
    per_clip, unscored = [], set()
    for row, words in zip(gen, prompts):
        top = {labels[i] for i in np.argsort(-row, kind="stable")[:k]}
        found = {}
        for w in words:
            tags = matching_tags(w, labels)
            if not tags:
                unscored.add(w)
                continue
            found[w] = bool(top & set(tags))
            hits += found[w]
            scored += 1
        per_clip.append(found)
    return {"agreement": hits / scored if scored else None, "scored": scored, "k": k,
            "per_clip": per_clip, "unscored": sorted(unscored)}
