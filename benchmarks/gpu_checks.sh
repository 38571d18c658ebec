#!/usr/bin/env bash
# Everything in this repo that needs a GPU, for a lent device machine. A session gets 15
# minutes of device time (the machine's start included) and one command may run 10
# minutes, so the work comes in steps, each under its own `timeout`:
#
#     bash benchmarks/gpu_checks.sh first      # engines, then tests: the issue-6 figures and the
#                                              # CUDA correctness tests in one command, at most 9.5 min
#     bash benchmarks/gpu_checks.sh tests      # CUDA tests (graph/compile vs static tokens, bf16 job), ~2 min
#     bash benchmarks/gpu_checks.sh engines    # generate benchmark: eager + graph, batch 1 and 8, ~3-5 min
#     bash benchmarks/gpu_checks.sh compile    # generate benchmark: torch.compile engine, batch 1, ~5 min
#     bash benchmarks/gpu_checks.sh train      # LM training tokens/s and MFU of `small`, ~2 min
#     bash benchmarks/gpu_checks.sh fsdp       # FSDP on one GPU: kill -9, resume from the sharded
#                                              # checkpoint, export (cannot run on CPU), ~3 min
#     bash benchmarks/gpu_checks.sh codec      # codec benchmark (24/48 kHz EnCodec against the encodec
#                                              # package, lean SEANet pass), ~1-2 min; needs encodec there
#     bash benchmarks/gpu_checks.sh all        # all of them in a row (over 10 minutes: not for one device call)
#
# With 15 minutes, run `first` (run(command="bash benchmarks/gpu_checks.sh first", timeout_s=600)),
# then, while the machine is still warm, `compile` if enough time is left.
#
# Results land in $OUT (the device tool's folder) or runs/gpu_checks, and a summary is
# printed. The generate benchmark compares with transformers' MusicgenForConditionalGeneration
# (`small`, bfloat16, 500 new frames = 10 s, whose cache spans two CUDA-graph buckets);
# `graph` must report same_tokens_as_static 1.0 (see benchmarks/generate.py for why eager
# and compile may not in bfloat16). The device image has torch, transformers and pytest but
# may lack soundfile & co.: the generate benchmark needs only torch, transformers, numpy and
# tqdm; the train benchmark also needs accelerate.
set -u
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-runs/gpu_checks}"
mkdir -p "$OUT"
STEP="${1:-all}"

case "$STEP" in first|tests|engines|compile|train|fsdp|codec|all) ;; *)
    echo "usage: bash benchmarks/gpu_checks.sh [first|tests|engines|compile|train|fsdp|codec|all]" >&2; exit 2 ;;
esac

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>&1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA')" | tee "$OUT/versions.txt"

run_tests() {  # $1: timeout in seconds
    # only the files that hold CUDA tests: collecting the whole suite would import test
    # dependencies (scipy, playwright, ...) the device image may not have
    if python3 -c "import pytest, soundfile, safetensors, yaml, scipy" 2>/dev/null; then
        timeout "$1" python3 -m pytest -q -p no:cacheprovider -m gpu \
            tests/generation/test_generate.py tests/codec/test_codec.py tests/codec/test_seanet.py \
            tests/metrics/test_fad.py > "$OUT/pytest_gpu.log" 2>&1
        tail -5 "$OUT/pytest_gpu.log"
    else
        echo "pytest/soundfile/safetensors/yaml/scipy not importable here: CUDA tests not run" \
            | tee "$OUT/pytest_gpu.log"
    fi
}

run_fsdp() {  # $1: timeout in seconds; a separate pytest run: test_training.py imports datasets and accelerate
    if python3 -c "import pytest, soundfile, safetensors, yaml, scipy, datasets, accelerate" 2>/dev/null; then
        timeout "$1" python3 -m pytest -q -p no:cacheprovider -m gpu tests/train/test_training.py > "$OUT/pytest_fsdp.log" 2>&1
        tail -5 "$OUT/pytest_fsdp.log"
    else
        echo "datasets/accelerate (or the test deps) not importable here: FSDP test not run" | tee "$OUT/pytest_fsdp.log"
    fi
}

run_codec() {  # $1: timeout in seconds
    if python3 -c "import encodec, safetensors" 2>/dev/null; then
        timeout "$1" python3 benchmarks/codec.py --devices cuda --repeats 3 > "$OUT/codec.json" 2> "$OUT/codec.log" \
            || echo "codec benchmark failed or timed out: see $OUT/codec.log"
    else
        echo "encodec/safetensors not importable here: codec benchmark not run" | tee "$OUT/codec.log"
    fi
}

run_generate() {  # $1: timeout in seconds, $2: name, then benchmark flags
    local limit="$1" name="$2"; shift 2
    timeout "$limit" python3 benchmarks/generate.py --devices cuda "$@" > "$OUT/$name.json" 2> "$OUT/$name.log" \
        || echo "generate benchmark ($name) failed or timed out: see $OUT/$name.log"
}

case "$STEP" in first) run_generate 300 generate_engines --engines eager graph --batches 1 8; run_tests 270 ;; esac
case "$STEP" in tests|all) run_tests 420 ;; esac
case "$STEP" in codec|all) run_codec 240 ;; esac
case "$STEP" in engines|all) run_generate 540 generate_engines --engines eager graph --batches 1 8 ;; esac
case "$STEP" in compile|all) run_generate 540 generate_compile --engines compile --batches 1 ;; esac
case "$STEP" in fsdp|all) run_fsdp 420 ;; esac
case "$STEP" in train|all)
    timeout 400 python3 benchmarks/train.py --devices cuda --steps 5 > "$OUT/train.json" 2> "$OUT/train.log" \
        || echo "train benchmark failed or timed out: see $OUT/train.log" ;;
esac

python3 - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for name in ("generate_engines", "generate_compile"):
    f = out / f"{name}.json"
    if not f.exists() or not f.stat().st_size:
        continue
    try:
        for run in json.loads(f.read_text())["runs"]:
            print(f"{name} {run['config']} b{run['batch']} {run['frames']} frames: "
                  f"transformers {run['transformers_frames_per_s']} fps {run.get('transformers_error', '')}")
            for engine, r in run["audiogen"].items():
                if "error" in r:
                    print(f"  {engine:8s} ERROR {r['error']}")
                    continue
                print(f"  {engine:8s} {r['frames_per_s']:9.1f} fps  {r['realtime_x']:7.1f}x real time  "
                      f"{r['speedup_vs_transformers']:6.2f}x transformers  setup {r['setup_s']} s  "
                      f"same tokens {r['same_tokens_as_static']} (first diff {r['first_divergent_frame']})")
    except Exception as e:  # noqa: BLE001
        print(f"no {name} figures:", e)
f = out / "train.json"
if f.exists() and f.stat().st_size:
    try:
        print("train:", json.dumps(json.loads(f.read_text()))[:600])
    except Exception as e:  # noqa: BLE001
        print("no train figures:", e)
PY
