#!/usr/bin/env bash
# Rebuild audiogen's embedded default model (audiogen/default_model/) from Debian's
# Creative Commons / GPL music, end to end. Each step resumes when rerun.
#
#   bash recipes/build_default_model.sh            # CPU, as the shipped model was built
#   CODEC_STEPS=20000 LM_STEPS=20000 bash recipes/build_default_model.sh   # a longer run
#
# The shipped model (see audiogen/default_model/MODEL_CARD.md) was built with these steps, except
# that its LM saw only the 26 files tokenized in the time the session had.
#
# Steps: fetch the corpus -> train the codec -> tokenize the corpus with it -> train the
# LM -> measure (codec quality, model report) -> copy the exported model into the package.
set -euo pipefail
cd "$(dirname "$0")/.."
MUSIC=.cache/debian-music
DATA=.cache/data_default
CODEC_STEPS=${CODEC_STEPS:-817}
LM_STEPS=${LM_STEPS:-900}

python3 -m audiogen.debian_music --packages singularity-music warzone2100-music wesnoth-1.16-music --out "$MUSIC"

# 1. the codec (the CPU build trains reconstruction losses only: disc_start_step beyond the run)
python3 recipes/train_codec.py --config recipes/configs/codec_default.yaml \
    max_steps="$CODEC_STEPS" disc_start_step=1000000
python3 benchmarks/codec_quality.py --codec runs/codec_default/codec --seconds 10 > runs/codec_default/quality.json

# 2. tokenize the corpus with its first 4 codebooks (3 kbps); the held-out split is by source file
python3 -m audiogen prep "$MUSIC" --out "$DATA" --codec runs/codec_default/codec --bandwidth 3 \
    --segment 10 --workers 1 || [ $? -eq 3 ]   # 3 = some files skipped (listed in prep_report.json)

# 3. the LM
python3 recipes/train_lm.py --config recipes/configs/lm_default.yaml data_dir="$DATA" \
    codec=runs/codec_default/codec max_steps="$LM_STEPS"

# 4. figures for the model card
python3 eval/model_report.py --model runs/lm_default/model --data "$DATA" --audio-dir "$MUSIC" \
    --work runs/model_report --json runs/model_report/report.json

# 5. ship it
rm -rf audiogen/default_model.new && cp -r runs/lm_default/model audiogen/default_model.new
cp audiogen/default_model/MODEL_CARD.md audiogen/default_model.new/ 2>/dev/null || true
rm -rf audiogen/default_model && mv audiogen/default_model.new audiogen/default_model
du -sh audiogen/default_model
