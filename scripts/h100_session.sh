#!/usr/bin/env bash
# The GPU session behind docs/runs/h100-dapo-100.md and docs/runs/two-gpu.md, one subcommand per device
# call (a call runs at most 10 minutes; the machine keeps ~/runs between calls while it stays warm).
# Needs the bundle of shared/device/README.md landed first (ray, wandb, mlflow-skinny, gguf, the GGUF).
#   prep            convert the GGUF to the bf16 safetensors folder once
#   chain           in the background (setsid): the 100-step run on GPU 0 and, a minute later, 10 steps on
#                   2 GPUs (its own Ray instance) then step 11 on 1 GPU from the 2-GPU checkpoint
#   progress        one line per run: steps done, last step line
#   smoke [k=v..]   convert the model once, then 3 traced steps on 1 GPU (timings before the long run)
#   start [k=v..]   launch the 100-step run on 1 GPU (W&B offline + MLflow embedded) with setsid
#   wait [S]        wait up to S seconds (default 540) for the run to end; show the log tail
#   twogpu [k=v..]  STEPS (20) steps on 2 GPUs (one Ray actor each, NCCL), then MORE (1) on 1 GPU from its checkpoint
#   compare         in the background: the 1-vs-2-GPU comparison of docs/runs/two-gpu.md, one run after the
#                   other on the same machine (1 GPU, 2 GPUs, resume on 1 GPU, 2 GPUs x 2 prompts, tracing off)
#   stop            end the background run with SIGINT (the trace is crash-safe either way)
#   pack            archive traces, the W&B offline run dir, the MLflow store and logs into $OUT
set -euo pipefail
cd "$(dirname "$0")/.."
. ~/wbstage/env.sh
export PYTHONPATH=$PWD:$PYTHONPATH WANDB_MODE=offline WANDB_SILENT=true PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # never NVLink multicast
export WBTRACE_GGUF=$WBSTAGE_FILES/SmolLM2-135M-Instruct.Q4_1.gguf
RUN=~/runs
mkdir -p "$RUN"
SINKS=("trainer.logger=[console,wandb]" trainer.wandb.mode=offline trainer.entropy_trace.mlflow.enable=true)
cmd=${1:?usage: h100_session.sh smoke|start|wait|twogpu|pack}; shift
GEN1=algorithm.filter_groups.max_num_gen_batches=1  # one generation batch per step: 100 steps fit the GPU budget
progress() {
  for f in "$RUN"/*.log; do
    [ "$(basename "$f")" = chain.log ] && continue
    [ -f "$f" ] && echo "$(basename "$f"): $(grep -c '^step' "$f") steps | $(grep '^step' "$f" | tail -n 1)"
  done
  return 0
}
case "$cmd" in
  prep)
    nvidia-smi -L
    python scripts/prepare_model.py 2>&1 | tail -n 1 ;;
  chain)
    setsid nohup bash scripts/h100_session.sh _chain </dev/null >"$RUN/chain.log" 2>&1 &
    sleep "${1:-30}"; progress ;;
  _chain)
    CUDA_VISIBLE_DEVICES=0 OUTPUT_DIR=$RUN/h100 bash scripts/train_dapo_h100.sh "${SINKS[@]}" $GEN1 >"$RUN/h100.log" 2>&1 &
    sleep 60
    OUTPUT_DIR=$RUN/two bash scripts/train_dapo_h100.sh "${SINKS[@]}" $GEN1 ray.address=local trainer.num_workers=2 \
      trainer.total_training_steps=10 trainer.save_freq=10 >"$RUN/two.log" 2>&1
    OUTPUT_DIR=$RUN/two bash scripts/train_dapo_h100.sh $GEN1 ray.address=local trainer.num_workers=1 \
      trainer.total_training_steps=11 >"$RUN/two_resume.log" 2>&1
    wait ;;
  compare)
    setsid nohup bash scripts/h100_session.sh _compare </dev/null >"$RUN/chain.log" 2>&1 &
    sleep "${1:-30}"; progress ;;
  _compare)
    # Same seed, prompts and sampling settings for every run; ray.address=local: a fresh Ray instance each.
    run() { local name=$1; shift; OUTPUT_DIR=$RUN/$name bash scripts/train_dapo_h100.sh "${SINKS[@]}" $GEN1 \
      ray.address=local "$@" >"$RUN/${LOG:-$name}.log" 2>&1 || echo "${LOG:-$name} failed" >>"$RUN/chain.log"; }
    N=${STEPS:-20}
    CUDA_VISIBLE_DEVICES=0 run one trainer.num_workers=1 "trainer.total_training_steps=$N"
    run two trainer.num_workers=2 "trainer.total_training_steps=$N" "trainer.save_freq=$N"
    CUDA_VISIBLE_DEVICES=0 LOG=two_resume run two trainer.num_workers=1 "trainer.total_training_steps=$((N + 1))"
    run two_x2 trainer.num_workers=2 data.train_batch_size=16 trainer.total_training_steps=10
    CUDA_VISIBLE_DEVICES=0 run one_notrace trainer.num_workers=1 trainer.total_training_steps=10 trainer.entropy_trace.enable=false
    run two_notrace trainer.num_workers=2 trainer.total_training_steps=10 trainer.entropy_trace.enable=false
    echo "compare done" >>"$RUN/chain.log" ;;
  progress) progress ;;
  smoke)
    nvidia-smi -L
    python scripts/prepare_model.py
    OUTPUT_DIR=$RUN/smoke bash scripts/train_dapo_h100.sh trainer.total_training_steps=3 "$@" 2>&1 | tail -n 12 ;;
  start)
    OUTPUT_DIR=$RUN/h100 setsid nohup bash scripts/train_dapo_h100.sh "${SINKS[@]}" "$@" >"$RUN/h100.log" 2>&1 </dev/null &
    sleep 60; tail -n 6 "$RUN/h100.log" ;;
  wait)
    for _ in $(seq "${1:-540}"); do pgrep -f "_compare|_chain|train --preset h100" >/dev/null || break; sleep 1; done
    progress ;;
  stop)
    pkill -INT -f "train --preset h100" || true
    for _ in $(seq 60); do pgrep -f "train --preset h100" >/dev/null || break; sleep 1; done
    pkill -KILL -f "train --preset h100" || true; ray stop --force >/dev/null 2>&1 || true
    tail -n 4 "$RUN/h100.log" ;;
  twogpu)
    # STEPS on 2 GPUs, then MORE steps on 1 GPU from its checkpoint: the load-back check and the 1-GPU
    # timing of the same policy; the 1-GPU part ends (SIGINT, crash-safe) by DEADLINE seconds if set.
    n=${STEPS:-20} more=${MORE:-1} t0=$SECONDS
    OUTPUT_DIR=$RUN/two bash scripts/train_dapo_h100.sh "${SINKS[@]}" $GEN1 ray.address=local trainer.num_workers=2 \
      "trainer.total_training_steps=$n" "trainer.save_freq=$n" "$@" >"$RUN/two.log" 2>&1
    left=$(( ${DEADLINE:-100000} - (SECONDS - t0) ))
    CUDA_VISIBLE_DEVICES=0 OUTPUT_DIR=$RUN/two timeout -s INT -k 20 "$left" bash scripts/train_dapo_h100.sh "${SINKS[@]}" \
      $GEN1 ray.address=local trainer.num_workers=1 "trainer.total_training_steps=$((n + more))" "$@" \
      >"$RUN/two_resume.log" 2>&1 || true
    progress ;;
  pack)
    h=$RUN/h100
    [ -d "$h" ] && tar -C "$h" -czf "$OUT/h100-trace.tgz" --exclude=mlflow.db --exclude=mlflow-artifacts entropy_trace metrics.jsonl || true
    [ -d "$h" ] && tar -C "$h/entropy_trace" -czf "$OUT/h100-mlflow.tgz" mlflow.db mlflow-artifacts || true
    [ -d "$h" ] && tar -C "$h/wandb" -czf "$OUT/h100-wandb.tgz" . || true
    runs=$(cd "$RUN" && ls -d one* two* 2>/dev/null | grep -v '\.log$' || true)
    [ -n "$runs" ] && tar -C "$RUN" -czf "$OUT/runs.tgz" --exclude=checkpoints --exclude=mlflow-artifacts \
      --exclude=mlflow.db --exclude=wandb $runs || true
    tar -C "$RUN" -czf "$OUT/logs.tgz" --exclude='*.tgz' $(cd "$RUN" && ls *.log) || true
    ls -la "$OUT" ;;
  *) echo "unknown subcommand $cmd" >&2; exit 2 ;;
esac
