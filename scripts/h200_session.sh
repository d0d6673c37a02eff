#!/usr/bin/env bash
# The GPU session behind docs/runs/h100-dapo-100.md (H200 redo) and the rollout rows of docs/BENCHMARKS.md,
# one subcommand per device call. Needs the bundle of shared/device/README.md landed first.
#   chain [S]   in the background (setsid): GGUF tokenizer facts, the 100-step headline run
#               (scripts/train_dapo_h100.sh, fast sampler, W&B offline + MLflow) between the small and the
#               large cases of scripts/bench_rollout.py, and a 3-step run kept whole as a small sample;
#               waits S seconds (default 30)
#   wait [S]    wait up to S seconds (default 540) for the chain; show where each part is
#   pack        bring back: bench JSON + log, the headline's trace/metrics/logs, its W&B and MLflow, the sample
set -euo pipefail
cd "$(dirname "$0")/.."
. ~/wbstage/env.sh
export PYTHONPATH=$PWD:$PYTHONPATH WANDB_MODE=offline WANDB_SILENT=true PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # never NVLink multicast
export WBTRACE_GGUF=$WBSTAGE_FILES/SmolLM2-135M-Instruct.Q4_1.gguf
RUN=~/runs
mkdir -p "$RUN"
cmd=${1:?usage: h200_session.sh chain|wait|pack}; shift
progress() {
  for f in "$RUN"/*.log; do
    [ -f "$f" ] && echo "$(basename "$f"): $(grep -c '^step\|^│' "$f" || true) lines | $(grep -v '^\s*$' "$f" | tail -n 2 | cut -c1-300 | tr '\n' ' ')"
  done
  return 0
}
case "$cmd" in
  chain)
    # from a copy: the next device call re-sends the checkout and replaces this folder
    rm -rf ~/code && cp -r . ~/code
    (cd ~/code && setsid nohup bash scripts/h200_session.sh _chain </dev/null >"$RUN/chain.log" 2>&1 &)
    sleep "${1:-30}"; progress ;;
  _chain)
    nvidia-smi -L
    # What this transformers reads from the GGUF, before wbtrace puts the file's own ids back.
    python -c "
import transformers, os
from transformers import AutoTokenizer
g = os.environ['WBTRACE_GGUF']
t = AutoTokenizer.from_pretrained(os.path.dirname(g), gguf_file=os.path.basename(g))
print('transformers', transformers.__version__, 'gguf tokenizer: eos', repr(t.eos_token), t.eos_token_id,
      'bos', repr(t.bos_token), 'pad', repr(t.pad_token))
try:
    import inspect, transformers.integrations.ggml as m
    print([ln.strip() for ln in inspect.getsource(m).splitlines() if 'eos_token' in ln and '=' in ln])
except Exception as e:
    print('no integrations.ggml source:', e)
" >"$RUN/gguf.log" 2>&1 || true
    # the small bench case first: its GPU correctness check says early whether the fast sampler is right
    python scripts/bench_rollout.py --gguf "$WBTRACE_GGUF" --cases smollm2:64x256 --out "$RUN/bench1.json" \
      >"$RUN/bench1.log" 2>&1 || echo "bench1 failed" >>"$RUN/chain.log"
    OUTPUT_DIR=$RUN/h200 bash scripts/train_dapo_h100.sh >"$RUN/h200.log" 2>&1 || echo "headline failed" >>"$RUN/chain.log"
    OUTPUT_DIR=$RUN/s3 bash scripts/train_dapo_h100.sh trainer.total_training_steps=3 trainer.save_freq=0 \
      trainer.experiment_name=dapo-3-steps >"$RUN/s3.log" 2>&1 || echo "sample failed" >>"$RUN/chain.log"
    python scripts/bench_rollout.py --gguf "$WBTRACE_GGUF" --cases smollm2:512x1024,qwen2.5-1.5b:512x1024 \
      --out "$RUN/bench2.json" >"$RUN/bench2.log" 2>&1 || echo "bench2 failed" >>"$RUN/chain.log"
    echo "chain done" >>"$RUN/chain.log" ;;
  wait)
    for _ in $(seq "${1:-540}"); do grep -q "chain done" "$RUN/chain.log" 2>/dev/null && break; sleep 1; done
    progress ;;
  pack)
    cp "$RUN"/bench*.json "$OUT/" 2>/dev/null || true
    tar -C "$RUN" -czf "$OUT/logs.tgz" $(cd "$RUN" && ls *.log) || true
    h=$RUN/h200
    [ -d "$h" ] && tar -C "$h" -czf "$OUT/h200-trace.tgz" --exclude=mlflow.db --exclude=mlflow-artifacts entropy_trace metrics.jsonl || true
    [ -d "$h" ] && tar -C "$h/entropy_trace" -czf "$OUT/h200-mlflow.tgz" mlflow.db mlflow-artifacts || true
    [ -d "$h" ] && tar -C "$h/wandb" -czf "$OUT/h200-wandb.tgz" . || true
    [ -d "$RUN/s3" ] && tar -C "$RUN" -czf "$OUT/s3.tgz" --exclude=checkpoints s3 || true
    ls -la "$OUT" ;;
  *) echo "unknown subcommand $cmd" >&2; exit 2 ;;
esac
