#!/usr/bin/env bash
# DAPO on CPU with SmolLM2-135M (the `make demo` run): a few real steps on 2 cores, then the trace stats.
# Extra dotted overrides pass through, e.g.  scripts/train_dapo_cpu.sh trainer.total_training_steps=2
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/demo}
GGUF_ARG=()
if [[ -n "${WBTRACE_GGUF:-}" ]]; then GGUF_ARG=("model.gguf_file=$WBTRACE_GGUF"); fi
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
"$PY" -c "from wbtrace.cli import main; main()" train --preset cpu "trainer.output_dir=$OUTPUT_DIR" "${GGUF_ARG[@]}" "$@"
