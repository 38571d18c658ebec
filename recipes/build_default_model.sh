#!/usr/bin/env bash
# Rebuild audiogen's embedded default model (audiogen/default_model/) from Debian's
# Creative Commons / GPL music, end to end. Each step resumes when rerun.
#
#   bash recipes/build_default_model.sh            # CPU, as the shipped model was built
#   LM_STEPS=20000 bash recipes/build_default_model.sh   # a longer LM run
#   CODEC=pitchrec bash recipes/build_default_model.sh   # the previous default (the pitch codec's codebooks fitted on
#       the recordings alone), built into runs/ only
#   CODEC=melvq bash recipes/build_default_model.sh      # the one before it (80 mel bands), built into runs/ only
#   CODEC=stft bash recipes/build_default_model.sh       # the one before that, built into runs/ only
#   CODEC=pitch440 bash recipes/build_default_model.sh   # the pitch codec's semitone bands on the A440 notes (in tune;
#       not the shipped model: docs/codec_training.md, "The A440 grid under an LM"), built into runs/ only
#   TRANSPOSE="-2 -1 1 2" CODEC=pitch bash recipes/build_default_model.sh  # LM on key-augmented rows (mel codecs;
#       not the shipped model: docs/adherence.md, "Key augmentation"), built into runs/ only
#   MORE_SCORES=1 DROP_HELD=1 bash recipes/build_default_model.sh  # 3.2 h more scores, the recordings' rows that hold
#       one chord left out, two LM cycles (docs/training.md, "Rows that hold one chord"), built into runs/ only
#   MORE_SCORES=1 DROP_HELD=1 HELD_WEIGHT=0.4 bash recipes/build_default_model.sh  # the same with those rows sampled
#       0.4 times as often as the others instead of never (docs/training.md, "Rows that hold one chord"), runs/ only
#   MORE_SCORES=1 HARMONY=1 bash recipes/build_default_model.sh  # every row kept and labelled held or moving, the LM
#       conditioned on it (--harmony; docs/training.md, "Harmony as a condition"), built into runs/ only
#
# Steps: fetch the corpus (all three packages) and render music21's scores (2.5 h) -> fit the mel codec
# (k-means residual VQ of the recordings' log-mel frames in 88 bands, semitones from 200 Hz to 2 kHz, with a
# split quantizer, its codebooks fitted on the recordings' and the rendered scores' frames:
# recipes/configs/codec_pitch.yaml; codebook 0 held through small changes by
# change_penalty 300, a linear post-filter on the decoded log-mel fitted on the recordings and the
# renders, its per-band offsets then refined on the power the quality checks measure, Griffin-Lim
# decoding: minutes on a CPU) -> the same codebooks searched tied (codebooks 1.. held to codebook 0's changes)
# with the post-filter refitted on tied codes -> tokenize the corpus with its first 6
# codebooks (3 kbps), with beat times and tagger
# labels, and the rendered scores (exact labels, instrument families first) -> train the LM with a beat
# grid on the recordings and the renders, 0.7 : 0.2 : 0.1 of the
# samples from the recordings, the 2.5 h of scores and the guitar and flute tunes
# (lm_default.yaml at lr 3e-3 for 1000 steps, then 1000 more steps from those weights at lr 1.5e-3, then
# 1500 more with residual dropout 0.1 at lr 1e-3: LM_SETTINGS, LM_FINETUNE and LM_DROPOUT below) -> measure (codec
# quality on the codec's held-out tracks, music-likeness of generated audio, LM loss vs a unigram
# baseline) -> copy the exported model into the package.
#
# The stft codec (a trained encoder/decoder, recipes/configs/codec_stft.yaml) was the default
# until its LM's output was found to be a near-static texture (2.5 dB of temporal variation); the
# mel codec reproduces held-out music far better (docs/codec_training.md). The 80-band mel codec
# (codec_melvq.yaml) was the default until 2026-12-06, when the semitone bands replaced it: the key survives
# them, and FAD prefers the LM on their tokens (docs/codec_training.md, "The pitch codec shipped").
# The pitch codec's codebooks were the recordings' alone until 2026-12-07; fitted with the renders' frames too they
# keep more timbre (docs/codec_training.md, "Where the timbre goes"), and the LM on their tokens hears more key
# requests in their key (the model card). CODEC=pitchrec, melvq and stft still build those variants into runs/
# without replacing audiogen/default_model.
set -euo pipefail
cd "$(dirname "$0")/.."
MUSIC=.cache/debian-all
CODEC_KIND=${CODEC:-pitch}
CODEC_STEPS=${CODEC_STEPS:-2400}
TAG=$CODEC_KIND  # the folders' suffix: .cache/data_$TAG_*, runs/codec_$TAG, runs/lm_$TAG (the pitch builds)
case "$CODEC_KIND" in
  stft)  DATA=.cache/data_default; CODEC_DIR=runs/codec_stft/codec; LM_OUT=runs/lm_default
         LM_SETTINGS="max_steps=1200"; LM_FINETUNE=""; LM_DROPOUT="" ;;
  melvq) DATA=.cache/data_beats;   CODEC_DIR=runs/codec_melvq/codec; LM_OUT=runs/lm_melvq
         LM_SETTINGS="lr=3e-3 max_steps=1000"; LM_FINETUNE="lr=1.5e-3 max_steps=1000"
         LM_DROPOUT="lm.dropout=0.1 lr=1e-3 max_steps=1500" ;;
  pitch|pitchrec|pitch440)  # each build's codec, tokens and LM in folders of their own (TAG)
         [ "$CODEC_KIND" = pitch ] && TAG=pr; [ "$CODEC_KIND" = pitchrec ] && TAG=pitch
         DATA=.cache/data_${TAG}_deb; CODEC_DIR=runs/codec_$TAG/codec; LM_OUT=runs/lm_$TAG
         LM_SETTINGS="lr=3e-3 max_steps=1000"; LM_FINETUNE="lr=1.5e-3 max_steps=1000"
         LM_DROPOUT="lm.dropout=0.1 lr=1e-3 max_steps=1500" ;;
  *) echo "CODEC must be stft, melvq, pitch, pitchrec or pitch440, not $CODEC_KIND" >&2; exit 2 ;;
esac
CODEC_CONFIG=$CODEC_KIND
FIT_EXTRA=""; CODEBOOKS=""
case "$CODEC_KIND" in
  pitch440) CODEC_CONFIG=pitch; FIT_EXTRA="codec.pitch_tuning_hz=440"  # its semitone bands on the A440 notes
            CODEBOOKS="codebook_data_dirs=[]" ;;  # the recordings' codebooks, as it was built and measured
  pitchrec) CODEC_CONFIG=pitch; CODEBOOKS="codebook_data_dirs=[]" ;;  # codebooks of the recordings alone
esac
if [ -n "${HELD_WEIGHT:-}" ]; then  # measured with the more scores only; a weight of 0 is DROP_HELD, 1 neither
  [ -n "${MORE_SCORES:-}" ] && [ -n "${DROP_HELD:-}" ] \
      || { echo "HELD_WEIGHT needs MORE_SCORES=1 DROP_HELD=1" >&2; exit 2; }
  python3 -c "import sys; w = float(sys.argv[1]); sys.exit(not 0 < w < 1)" "$HELD_WEIGHT" 2>/dev/null \
      || { echo "HELD_WEIGHT=$HELD_WEIGHT: give a number between 0 and 1 (0.4 measured)" >&2; exit 2; }
fi
if [ -n "${HARMONY:-}" ]; then  # measured with the more scores only, and it keeps the held rows
  [ -n "${MORE_SCORES:-}" ] && [ -z "${DROP_HELD:-}" ] \
      || { echo "HARMONY needs MORE_SCORES=1 and does not combine with DROP_HELD (it labels the held rows)" >&2
           exit 2; }
fi
if [ -n "${TRANSPOSE:-}" ] && [ -n "${MORE_SCORES:-}${DROP_HELD:-}" ]; then
  echo "TRANSPOSE does not combine with MORE_SCORES or DROP_HELD (it transposes the recipe's three datasets only)" >&2
  exit 2
fi

python3 -m audiogen.data.debian_music --packages singularity-music warzone2100-music wesnoth-1.16-music --out "$MUSIC"
# rendered public-domain scores: the mel codec's post-filter learns from them too (codec_pitch.yaml), and the
# LM trains on them beside the recordings (the mel builds); folk tunes on guitar and flute make up for the
# two instruments the 2.5 h lack (2 guitar segments of 800)
python3 data_prep/render_music21.py --out .cache/music21-rendered --hours 2.5
python3 data_prep/render_music21.py --collections ryans_mammoth oneills --ensembles guitar flute --hours 0.6 \
    --out .cache/music21-extra

# 1. the codec
if [ "$CODEC_KIND" = stft ]; then  # log-mel encoder, factorized RVQ, iSTFT decoder (reconstruction losses only on CPU)
  python3 recipes/train_codec.py --config recipes/configs/codec_stft.yaml data_dir="$MUSIC" \
      max_steps="$CODEC_STEPS" cache_dir=.cache/codec_audio_24k
else  # k-means residual VQ of log-mel frames (pitch: semitone bands; melvq: 80 mel bands), Griffin-Lim decoding
  # (minutes, no gradients)
  python3 recipes/fit_mel_codec.py --config "recipes/configs/codec_$CODEC_CONFIG.yaml" data_dir="$MUSIC" $FIT_EXTRA \
      $CODEBOOKS out_dir="$(dirname "$CODEC_DIR")"
fi
python3 benchmarks/codec_quality.py --codec "$CODEC_DIR" > "$(dirname "$CODEC_DIR")/quality.json"
if [ "$CODEC_KIND" != stft ]; then  # the LM's tokens: the same codec, its codebooks 1.. held as codebook 0 is
  # (penalty 300, free where codebook 0 changes): the LM learns chords that move from them
  # (docs/codec_training.md, "Tied tokens for the LM"); this copy is the one the model ships and encodes with
  if [ "$CODEC_CONFIG" = pitch ]; then  # the same codebooks, their post-filter refitted on tied codes (5 minutes)
    TOKENS_CODEC="$(dirname "$CODEC_DIR")_tied/codec"
    python3 recipes/fit_mel_codec.py --config recipes/configs/codec_pitch.yaml data_dir="$MUSIC" $FIT_EXTRA \
        codebooks_from="$CODEC_DIR" codebook_data_dirs=[] codec.residual_change_penalty=300 \
        codec.residual_tied=true out_dir="$(dirname "$TOKENS_CODEC")"
  else  # the same decoding, only the search changes
    TOKENS_CODEC="$(dirname "$CODEC_DIR")/codec_tied"
    python3 -c "import sys; from audiogen.codec.mel import with_search
with_search(sys.argv[1], sys.argv[2], residual_change_penalty=300.0, residual_tied=True)" "$CODEC_DIR" "$TOKENS_CODEC"
  fi
  python3 benchmarks/codec_quality.py --codec "$TOKENS_CODEC" > "$(dirname "$CODEC_DIR")/quality_tied.json"
  CODEC_DIR=$TOKENS_CODEC
fi

# 2. tokenize the corpus with the first 6 codebooks (3 kbps); the held-out split is by source file
# with beat times (the LM's beat grid) and genre/mood/instrument labels from the packaged musicnn tagger
python3 -m audiogen prep "$MUSIC" --out "$DATA" --codec "$CODEC_DIR" --bandwidth 3 \
    --segment 10 --workers 1 --tag-labels || [ $? -eq 3 ]   # 3 = some files skipped (listed in prep_report.json)
MIX=""
if [ "$CODEC_KIND" != stft ]; then  # the renders, labelled from their scores (the tagger fills in only what they lack)
  REN=.cache/data_rendered; EXTRA=.cache/data_extra  # each codec's tokens in their own folders
  [ "$CODEC_KIND" = melvq ] || { REN=.cache/data_${TAG}_ren; EXTRA=.cache/data_${TAG}_extra; }
  prep_renders() {  # a rendered corpus under .cache ($1) tokenized into $2 as the recordings are
    python3 -m audiogen prep ".cache/$1" --out "$2" --codec "$CODEC_DIR" --bandwidth 3 \
        --segment 10 --workers 1 --tag-labels || [ $? -eq 3 ]
  }
  prep_renders music21-rendered "$REN"
  prep_renders music21-extra "$EXTRA"
  MIX="extra_data_dirs=[$REN,$EXTRA] data_weights=[0.7,0.2,0.1]"
  if [ -n "${MORE_SCORES:-}" ]; then  # 3.2 h more scores, none of them in the two corpora above (not in the shipped
    # model; docs/training.md, "More scores"): chorales, Palestrina, Monteverdi, quartets; then fiddle tunes. With them a
    # third (dropout) cycle overfits, so the LM is the first two cycles
    python3 data_prep/render_music21.py --out .cache/music21-more-a --hours 2 \
        --collections bach_chorales palestrina monteverdi string_quartets joplin \
        --skip-pieces-in .cache/music21-rendered .cache/music21-extra
    python3 data_prep/render_music21.py --out .cache/music21-more-b --hours 1.2 --collections ryans_mammoth oneills \
        --skip-pieces-in .cache/music21-rendered .cache/music21-extra
    prep_renders music21-more-a "${REN}_more_a"
    prep_renders music21-more-b "${REN}_more_b"
    SCORES="$REN,$EXTRA,${REN}_more_a,${REN}_more_b"; SCORE_WEIGHTS="0.1,0.07,0.1,0.08"; REC_SHARE=0.65
    MIX="extra_data_dirs=[$SCORES] data_weights=[$REC_SHARE,$SCORE_WEIGHTS]"
    LM_DROPOUT=""; LM_OUT=${LM_OUT}_more
  fi
  if [ -n "${HARMONY:-}" ]; then  # every row of the five datasets labelled held or moving, the LM conditioned on it
    # and played moving unless asked (not in the shipped model; docs/training.md, "Harmony as a condition")
    label() {  # a dataset ($1) labelled into $1_hl from the audio it was prepared from ($2)
      [ -d "$1_hl" ] || python3 data_prep/label_harmony.py "$1" --audio-dir "$2" --out "$1_hl" --no-progress
    }
    label "$DATA" "$MUSIC"; label "$REN" .cache/music21-rendered; label "$EXTRA" .cache/music21-extra
    label "${REN}_more_a" .cache/music21-more-a; label "${REN}_more_b" .cache/music21-more-b
    SCORES="${REN}_hl,${EXTRA}_hl,${REN}_more_a_hl,${REN}_more_b_hl"
    MIX="extra_data_dirs=[$SCORES] data_weights=[$REC_SHARE,$SCORE_WEIGHTS]"
    DATA=${DATA}_hl; LM_OUT=${LM_OUT}_hl
  fi
  if [ -n "${DROP_HELD:-}" ]; then  # the recordings' train rows that hold one chord for their 10 s left out (a quarter
    # of them; not in the shipped model; docs/training.md, "Rows that hold one chord"); valid as it was. With
    # HELD_WEIGHT=w (0 < w < 1) they are mixed back as a dataset of their own, each sampled w times as often as a
    # moving row (the recordings' share of the samples as it was)
    [ -d "${DATA}_nd" ] || python3 data_prep/drop_held_rows.py "$DATA" --audio-dir "$MUSIC" --out "${DATA}_nd" \
        --held-out "${DATA}_held" --no-progress
    if [ -n "${HELD_WEIGHT:-}" ]; then
      [ -d "${DATA}_held" ] || { echo "HELD_WEIGHT: ${DATA}_held is missing; remove ${DATA}_nd and rerun" >&2; exit 2; }
      W=$(python3 -c "import sys; from audiogen.data.loader import load_prepared
w, share, (a, b) = float(sys.argv[1]), float(sys.argv[2]), [len(load_prepared(d)['train']) for d in sys.argv[3:]]
print('%.4f,%.4f' % (share * a / (a + w * b), share * w * b / (a + w * b)))" \
          "$HELD_WEIGHT" "$REC_SHARE" "${DATA}_nd" "${DATA}_held")
      MIX="extra_data_dirs=[${DATA}_held,$SCORES] data_weights=[$W,$SCORE_WEIGHTS]"  # the recordings' share in two
    fi
    DATA=${DATA}_nd; LM_OUT=${LM_OUT}_${HELD_WEIGHT:+hw}nd
  fi
  if [ -n "${TRANSPOSE:-}" ]; then  # key augmentation (not in the shipped model): every train row again at each of
    # $TRANSPOSE semitones, e.g. TRANSPOSE="-2 -1 1 2" (minutes; docs/adherence.md, "Key augmentation"); valid as it was
    for d in "$DATA" "$REN" "$EXTRA"; do
      [ -d "${d}_tr" ] || python3 data_prep/transpose_keys.py "$d" --out "${d}_tr" --codec "$CODEC_DIR" \
          --semitones $TRANSPOSE --no-progress
    done
    DATA=${DATA}_tr; MIX="extra_data_dirs=[${REN}_tr,${EXTRA}_tr] data_weights=[0.7,0.2,0.1]"
    LM_OUT=${LM_OUT}_tr
  fi
fi

# 3. the LM
# (later key=value settings win: LM_STEPS over LM_SETTINGS over the config file)
python3 recipes/train_lm.py --config recipes/configs/lm_default.yaml data_dir="$DATA" $MIX \
    codec="$CODEC_DIR" $LM_SETTINGS ${LM_STEPS:+max_steps="$LM_STEPS"} out_dir="$LM_OUT"
if [ -n "$LM_FINETUNE" ]; then  # a second cosine cycle from the first run's weights, at half the rate
  python3 recipes/train_lm.py --config recipes/configs/lm_default.yaml data_dir="$DATA" $MIX \
      codec="$CODEC_DIR" $LM_FINETUNE init_from="$LM_OUT/model" out_dir="${LM_OUT}_ft"
  LM_OUT=${LM_OUT}_ft
fi
if [ -n "$LM_DROPOUT" ]; then  # a third cycle with residual dropout (without it a third cycle overfits)
  python3 recipes/train_lm.py --config recipes/configs/lm_default.yaml data_dir="$DATA" $MIX \
      codec="$CODEC_DIR" $LM_DROPOUT init_from="$LM_OUT/model" out_dir="${LM_OUT}_do"
  LM_OUT=${LM_OUT}_do
fi

# 4. figures for the model card
python3 eval/model_report.py --model "$LM_OUT/model" --data "$DATA" --audio-dir "$MUSIC" \
    --work "$LM_OUT/report" --json "$LM_OUT/report/report.json" --figure "$LM_OUT/report/spectrograms.png"

# 5. ship it (the pitch build without TRANSPOSE, MORE_SCORES, DROP_HELD or HARMONY only: see above)
[ "$CODEC_KIND" = pitch ] && [ -z "${TRANSPOSE:-}${MORE_SCORES:-}${DROP_HELD:-}${HARMONY:-}" ] \
    || { echo "built $LM_OUT/model (not shipped)"; exit 0; }
rm -rf audiogen/default_model.new && cp -r "$LM_OUT/model" audiogen/default_model.new
cp audiogen/default_model/MODEL_CARD.md audiogen/default_model/ATTRIBUTION.md audiogen/default_model.new/ 2>/dev/null || true
rm -rf audiogen/default_model && mv audiogen/default_model.new audiogen/default_model
du -sh audiogen/default_model
