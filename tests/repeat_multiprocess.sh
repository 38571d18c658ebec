#!/usr/bin/env bash
# Run the multi-process tests (real 2-rank gloo jobs: DDP, kill -9 of a rank, two "nodes" over
# loopback, the SLURM launch line, FSDP2, the codec trainer, 2-process prep) N times in a row,
# each pass in a fresh pytest process; stops at the first failure. Issue 18 asks for 20 passes.
#   bash tests/repeat_multiprocess.sh [N] [LOG_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
N=${1:-20}
LOG=${2:-.cache/repeat_multiprocess}
mkdir -p "$LOG"
TESTS=(
  tests/train/test_training.py::test_two_ranks_match_one_process_with_the_same_global_batch
  tests/train/test_training.py::test_kill_9_of_one_rank_then_rerun_is_bit_identical_to_an_uninterrupted_two_rank_run
  tests/train/test_training.py::test_two_nodes_over_loopback_form_one_job_and_resume_after_kill_9
  tests/train/test_training.py::test_the_slurm_script_launch_line_forms_one_job_over_loopback
  tests/train/test_training.py::test_fsdp2_over_gloo_saves_sharded_checkpoints_resumes_after_kill_9_and_exports_a_loadable_model
  tests/train/test_codec_training.py::test_two_ranks_kill9_of_one_rank_then_resume_is_bit_identical_to_an_uninterrupted_two_rank_run
  tests/data/test_prep_ranks.py::test_two_processes_killed_and_rerun_give_the_single_process_dataset
)
for i in $(seq 1 "$N"); do
  start=$(date +%s)
  python3 -m pytest -q -p no:cacheprovider "${TESTS[@]}" > "$LOG/pass$i.log" 2>&1
  rc=$?
  echo "pass $i/$N: exit $rc, $(( $(date +%s) - start )) s, $(tail -1 "$LOG/pass$i.log")"
  if [ $rc -ne 0 ]; then echo "failed: see $LOG/pass$i.log"; exit $rc; fi
done
echo "all $N passes passed"
