#!/usr/bin/env bash
# Everything in this repo that needs a GPU, in one call on a lent device machine (a
# session gets 30 minutes of device time: batch the work). From the repo root:
#
#     bash benchmarks/gpu_checks.sh            # results in $OUT (device tool) or runs/gpu_checks
#
# 1. benchmarks/generate.py on CUDA: decode engines (eager, CUDA graph, compiled graph)
#    against transformers' MusicGen, `small` in bfloat16, batch 1 and 8, with each
#    engine's tokens checked against the fixed-shape step (same_tokens_as_static);
# 2. benchmarks/train.py: LM training tokens/s and MFU of `small` (bf16 autocast);
# 3. the CUDA tests (pytest -m gpu), where the test dependencies are importable.
# The device image has torch, transformers and pytest but may lack soundfile & co.;
# steps 1-2 need only torch and transformers.
set -u
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-runs/gpu_checks}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>&1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA')" | tee "$OUT/versions.txt"

python3 benchmarks/generate.py --devices cuda --batches 1 8 > "$OUT/generate.json" 2> "$OUT/generate.log" \
    || echo "generate benchmark failed: see $OUT/generate.log"
python3 benchmarks/train.py --steps 5 > "$OUT/train.json" 2> "$OUT/train.log" \
    || echo "train benchmark failed: see $OUT/train.log"
if python3 -c "import pytest, soundfile, safetensors, yaml" 2>/dev/null; then
    python3 -m pytest -q -m gpu tests > "$OUT/pytest_gpu.log" 2>&1; tail -3 "$OUT/pytest_gpu.log"
else
    echo "pytest/soundfile/safetensors/yaml not importable here: CUDA tests not run" | tee "$OUT/pytest_gpu.log"
fi

python3 - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
try:
    for run in json.loads((out / "generate.json").read_text())["runs"]:
        print(f"generate {run['config']} b{run['batch']}: transformers {run['transformers_frames_per_s']} fps")
        for engine, r in run["audiogen"].items():
            print(f"  {engine:8s} {r['frames_per_s']:9.1f} fps  {r['realtime_x']:7.1f}x real time  "
                  f"{r['speedup_vs_transformers']:6.2f}x transformers  same tokens {r['same_tokens_as_static']}")
except Exception as e:  # noqa: BLE001
    print("no generate figures:", e)
try:
    print("train:", json.dumps(json.loads((out / "train.json").read_text()))[:600])
except Exception as e:  # noqa: BLE001
    print("no train figures:", e)
PY
