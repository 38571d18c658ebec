"""Audit generated audio against a prepared dataset: evidence, then a verdict.

``Auditor(DATA_DIR).audit_file(path)`` returns one JSON-able dict per file:

- ``tokens``: the longest exact runs of codec frames shared with training items, over all
  codebooks (``all``) and codebook 0 alone (``cb0``), after encoding the file with the
  dataset's codec (or, at generation time, the very codes the model sampled); and over all
  codebooks of the training items' tokens round-tripped through the codec (``rt``: what
  re-encoding the audio of memorised tokens gives) and codebook 0 of those (``rt0``);
- ``embedding``: the longest streak of 3 s windows whose nearest reference window, in one
  item, is closer than ``emb_cosine``;
- ``chroma``: the longest transposition-invariant chroma alignment with a shortlisted item;
- ``verdict``: ``copy`` when any measure reaches its copy threshold, ``similar`` when any
  reaches its similar threshold, else ``original``, with the reasons.

The thresholds (:class:`Thresholds`) were calibrated with ``benchmarks/audit.py`` (see
docs/audit.md for the figures and how to rerun it on your own data).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from audiogen.errors import AudiogenError
from audiogen.originality.tokens import INDEX_DIR, TokenIndex

VERDICTS = ("original", "similar", "copy")


@dataclass
class Thresholds:
    """Seconds of shared material (or a cosine) from which a measure calls a file similar / a copy."""

    copy_tokens_s: float = 1.0  # exact run over all codebooks
    similar_tokens_s: float = 0.5
    copy_cb0_s: float = 2.0  # exact run of codebook 0
    similar_cb0_s: float = 1.0
    emb_cosine: float = 0.9  # a window "matches" its nearest neighbour above this
    copy_emb_s: float = 6.0  # consecutive matching windows (window 3 s, hop 0.5 s)
    similar_emb_s: float = 4.0
    copy_chroma_s: float = 8.0  # aligned chroma (about matched frames / 5.4 per second)
    similar_chroma_s: float = 6.0  # unrelated music: at most 5.0 s (docs/audit.md)


def load_dataset_codec(desc: dict, codec_path: str | None = None):
    """The codec a dataset was tokenized with, from its description (``codec_path`` for a codec folder;
    without one, the embedded default model's codec when the dataset was prepared with ``--codec default``)."""
    from audiogen.codec.base import DEFAULT_CODEC, load_codec
    from audiogen.train.lm import codec_spec

    try:
        spec, codec = codec_spec(desc, codec_path or "")
    except AudiogenError:
        if codec_path or not desc.get("weights_sha256"):
            raise
        spec, codec = codec_spec(desc, DEFAULT_CODEC)  # says which fields differ when it is not that one
    return codec if codec is not None else load_codec(spec, num_codebooks=desc.get("num_codebooks"))


def check_codec(codec, desc: dict, what: str) -> None:
    """``codec`` must be the one the dataset was tokenized with, or its tokens mean nothing here.

    The weights' hash is not compared: a model directory may hold a float16 copy of the
    dataset's codec (``save_model_dir(dtype=...)``), whose tokens are the same but whose file is not."""
    from audiogen.codec.base import describe_diff

    diff = describe_diff(codec.describe(), desc, also=("name",))
    if diff:
        raise AudiogenError(f"{what}: its codec is not the one the dataset was tokenized with ({', '.join(diff)} "
                            "differ), so its tokens cannot be compared")


def build_index(data_dir: str | os.PathLike, embedder_name: str = "builtin", weights: str | None = None,
                codec_path: str | None = None, tokens_only: bool = False, progress: bool = True,
                audio: bool = True) -> dict:
    """``audiogen audit index``: the token index, then (unless ``tokens_only``) the round-trip token
    index and (when ``audio``) the audio index, which need the codec."""
    from audiogen.metrics.embedders import load_embedder
    from audiogen.originality.near import build_audio_index
    from audiogen.originality.tokens import build_roundtrip_index, build_token_index

    report = {"tokens": build_token_index(data_dir, progress=progress)}
    if not tokens_only:
        tok = TokenIndex(data_dir)
        codec = load_dataset_codec(tok.codec, codec_path)
        report["roundtrip"] = build_roundtrip_index(data_dir, codec, progress=progress)
        if audio:
            emb = load_embedder(embedder_name, weights)
            report["audio"] = build_audio_index(data_dir, tok, emb, lambda: codec, progress=progress)
    return report


class Auditor:
    """Audits audio against one prepared dataset's audit index."""

    def __init__(self, data_dir: str | os.PathLike, codec=None, codec_path: str | None = None,
                 embedder_name: str = "builtin", weights: str | None = None, tokens_only: bool = False,
                 thresholds: Thresholds | None = None):
        self.data_dir = Path(data_dir)
        if not (self.data_dir / INDEX_DIR).is_dir():
            raise AudiogenError(f"{self.data_dir}: no audit index; build it first with "
                                f"'audiogen audit index {self.data_dir}'")
        self.tokens = TokenIndex(self.data_dir)
        if codec is not None:
            check_codec(codec, self.tokens.codec, "the model")
        self._codec = codec
        self.codec_path = codec_path
        self.thresholds = thresholds or Thresholds()
        self.audio = None
        if not tokens_only:
            from audiogen.metrics.embedders import load_embedder
            from audiogen.originality.near import AudioIndex

            self.audio = AudioIndex(self.data_dir, self.tokens, load_embedder(embedder_name, weights), self.codec)

    def codec(self):
        if self._codec is None:
            self._codec = load_dataset_codec(self.tokens.codec, self.codec_path)
        return self._codec

    def encode(self, wav: np.ndarray, sr: int) -> np.ndarray:
        """``wav: float32[C, N]`` -> the dataset codec's ``codes: int[K, T]``."""
        import torch

        from audiogen.audio import io as A

        c = self.codec()
        x = A.convert_channels(A.resample(np.asarray(wav, np.float32), sr, c.sample_rate), c.channels)
        return c.encode(torch.from_numpy(np.ascontiguousarray(x))[None])[0].cpu().numpy()

    def audit(self, wav: np.ndarray, sr: int, codes: np.ndarray | None = None) -> dict:
        """Evidence and verdict for ``wav: float32[C, N]`` at ``sr``; ``codes: int[K, T]`` when the
        generator's own tokens are at hand (else the audio is encoded with the dataset's codec)."""
        th = self.thresholds
        if codes is None:
            codes = self.encode(wav, sr)
        tok = self.tokens
        result: dict = {"duration_s": round(wav.shape[-1] / sr, 3), "tokens": {}}
        reasons = {"copy": [], "similar": []}
        token_items = set()
        what = {"all": "identical tokens with", "cb0": "identical codebook-0 tokens with",
                "rt": "tokens identical to the codec's round trip of",
                "rt0": "codebook-0 tokens identical to the codec's round trip of"}
        for name, copy_s, similar_s in (("all", th.copy_tokens_s, th.similar_tokens_s),
                                        ("cb0", th.copy_cb0_s, th.similar_cb0_s),
                                        ("rt", th.copy_tokens_s, th.similar_tokens_s),
                                        ("rt0", th.copy_cb0_s, th.similar_cb0_s)):
            if name not in tok.names:
                continue
            runs = [tok.describe_run(r) | {"item_index": r.item} for r in tok.runs(codes, name)]
            result["tokens"][name] = runs
            token_items.update(r["item_index"] for r in runs)
            longest = runs[0]["seconds"] if runs else 0.0
            self._grade(reasons, f"tokens.{name}", longest, copy_s, similar_s,
                        f"{longest:.2f}s of {what[name]}"
                        + (f" {runs[0]['source']} at {runs[0]['source_start_s']:.1f}s" if runs else ""))
        if self.audio is not None:
            result.update(self._near(wav, sr, token_items, reasons))
        result["verdict"] = "copy" if reasons["copy"] else "similar" if reasons["similar"] else "original"
        result["reasons"] = reasons["copy"] or reasons["similar"]
        result["thresholds"] = asdict(th)
        return result

    @staticmethod
    def _grade(reasons: dict, measure: str, value: float, copy_at: float, similar_at: float, text: str) -> None:
        if value >= copy_at:
            reasons["copy"].append(f"{measure}: {text} (copy from {copy_at:g}s)")
        elif value >= similar_at:
            reasons["similar"].append(f"{measure}: {text} (similar from {similar_at:g}s)")

    def _near(self, wav: np.ndarray, sr: int, token_items: set, reasons: dict) -> dict:
        from audiogen.audio import io as A
        from audiogen.originality.near import (CHROMA_FPS, CHROMA_SR, SHORTLIST, chroma_alignment,
                                               chroma_features, window_embeddings)

        th, ai = self.thresholds, self.audio
        mono = A.resample(np.asarray(wav, np.float32).mean(axis=0), sr, CHROMA_SR).astype(np.float32)
        starts, emb = window_embeddings(ai.embedder, mono, CHROMA_SR)
        best, _, per_item = ai.nearest(emb)
        m = ai.embedding_match(starts, emb, per_item, th.emb_cosine)
        items = self.tokens.items
        out: dict = {"embedding": {"embedder": ai.embedder.cache_key, "best_cosine": round(float(best.max()), 4),
                                   "match": None}}
        if m is not None:
            it = items[m.item]
            out["embedding"]["match"] = {
                "seconds": m.seconds, "cosine": round(m.similarity, 4), "item": it["id"], "item_index": m.item,
                "source": it["source"], "query_start_s": m.query_start_s,
                "query_end_s": m.query_start_s + m.seconds,
                "source_start_s": round(it["start_s"] + m.ref_start_s, 3),
                "source_end_s": round(it["start_s"] + m.ref_start_s + m.seconds, 3)}
        seconds = m.seconds if m else 0.0
        self._grade(reasons, "embedding", seconds, th.copy_emb_s, th.similar_emb_s,
                    f"{seconds:.1f}s of windows closer than cosine {th.emb_cosine:g}"
                    + (f" to {items[m.item]['source']}" if m else ""))
        # chroma: the items nearest by embedding, those the tokens found, or all of a small corpus
        ranked = sorted(per_item, key=lambda i: -per_item[i])
        shortlist = list(dict.fromkeys([*token_items, *ranked[:SHORTLIST]])) if len(items) > SHORTLIST else list(range(len(items)))
        qc = chroma_features(mono, CHROMA_SR)
        best_c, best_parts = None, None
        for item in shortlist:  # each with its neighbours in the recording: a copy may cross a row boundary
            ref, parts = ai.context_chroma(item)
            a = chroma_alignment(qc, ref)
            if best_c is None or a["seconds"] > best_c["seconds"]:
                best_c, best_parts = a, parts
        out["chroma"] = {"shortlist": len(shortlist), "match": None}
        if best_c is not None:
            # the item the aligned reference starts in; times from that item's start in the recording
            best_item, first = next((i, f) for i, f in reversed(best_parts) if f <= best_c["r"][0])
            it = items[best_item]
            out["chroma"]["match"] = {
                "seconds": round(best_c["seconds"], 3), "transpose_semitones": int(best_c["shift"]),
                "item": it["id"], "item_index": best_item, "source": it["source"],
                "query_start_s": round(best_c["q"][0] / CHROMA_FPS, 2), "query_end_s": round(best_c["q"][1] / CHROMA_FPS, 2),
                "source_start_s": round(it["start_s"] + (best_c["r"][0] - first) / CHROMA_FPS, 2),
                "source_end_s": round(it["start_s"] + (best_c["r"][1] - first) / CHROMA_FPS, 2)}
        seconds = best_c["seconds"] if best_c else 0.0
        self._grade(reasons, "chroma", seconds, th.copy_chroma_s, th.similar_chroma_s,
                    f"{seconds:.1f}s of aligned melody/harmony"
                    + (f" with {items[best_item]['source']}" if best_c else ""))
        return out

    def audit_file(self, path: str | os.PathLike) -> dict:
        from audiogen.audio import io as A

        wav, sr = A.load_audio(path)
        return {"file": str(path), **self.audit(wav, sr)}
