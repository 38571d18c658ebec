#!/usr/bin/env bash
# Rebuild audiogen's embedded default model (audiogen/default_model/) from Debian's
# Creative Commons / GPL music, end to end. Each step resumes when rerun.
#
#   bash recipes/build_default_model.sh            # CPU, as the shipped model was built
#   LM_STEPS=20000 bash recipes/build_default_model.sh   # a longer LM run
#
# Steps: fetch the corpus (all three packages) -> fit the mel codec (k-means residual VQ of
# log-mel frames, Griffin-Lim decoding; minutes) -> tokenize the corpus with its first 6
# codebooks (3 kbps) -> train the LM -> measure (codec quality on the codec's held-out tracks,
# music-likeness of generated audio, LM loss vs a unigram baseline) -> copy the exported model
# into the package.
set -euo pipefail
cd "$(dirname "$0")/.."
MUSIC=.cache/debian-all
DATA=.cache/data_melvq
CODEC=runs/codec_melvq/codec
LM_STEPS=${LM_STEPS:-1200}

python3 -m audiogen.debian_music --packages singularity-music warzone2100-music wesnoth-1.16-music --out "$MUSIC"

# 1. the codec: k-means residual VQ of 80-band log-mel frames, Griffin-Lim decoding (no gradient training)
python3 recipes/fit_mel_codec.py --config recipes/configs/codec_melvq.yaml data_dir="$MUSIC"
python3 benchmarks/codec_quality.py --codec "$CODEC" > runs/codec_melvq/quality.json

# 2. tokenize the corpus with the first 6 codebooks (3 kbps); the held-out split is by source file
python3 -m audiogen prep "$MUSIC" --out "$DATA" --codec "$CODEC" --bandwidth 3 \
    --segment 10 --workers 1 || [ $? -eq 3 ]   # 3 = some files skipped (listed in prep_report.json)

# 3. the LM
python3 recipes/train_lm.py --config recipes/configs/lm_default.yaml data_dir="$DATA" \
    codec="$CODEC" max_steps="$LM_STEPS"

# 4. figures for the model card
python3 eval/model_report.py --model runs/lm_default/model --data "$DATA" --audio-dir "$MUSIC" \
    --work runs/model_report --json runs/model_report/report.json

# 5. ship it
rm -rf audiogen/default_model.new && cp -r runs/lm_default/model audiogen/default_model.new
cp audiogen/default_model/MODEL_CARD.md audiogen/default_model/ATTRIBUTION.md audiogen/default_model.new/ 2>/dev/null || true
rm -rf audiogen/default_model && mv audiogen/default_model.new audiogen/default_model
du -sh audiogen/default_model
