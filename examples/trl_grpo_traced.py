"""Runnable example: trace a TRL GRPO run (loss_type "dapo") with wbtrace, on CPU, no downloads.

    HF_HUB_OFFLINE=1 python examples/trl_grpo_traced.py /tmp/trl_trace
    wbtrace stats /tmp/trl_trace        # or TraceStore("/tmp/trl_trace").read_step(1)

A tiny random Qwen2 and a word-level tokenizer are built in code so the example runs anywhere; with a
real model, pass `model="Qwen/Qwen2.5-0.5B-Instruct"` and your dataset as usual.
"""

import sys

import numpy as np
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from trl import GRPOConfig

from wbtrace import TraceStore
from wbtrace.integrations.trl import WbtraceGRPOTrainer

words = [f"w{i}" for i in range(40)]
tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(["<pad>", "<eos>", "<unk>", *words])}, unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                     pad_token_id=0, eos_token_id=1))
rng = np.random.default_rng(0)
dataset = Dataset.from_dict({"prompt": [" ".join(rng.choice(words, 3)) for _ in range(32)]})


def reward_short(completions, **kwargs):
    return [1.0 if len(c.split()) < 4 else 0.0 for c in completions]


run_dir = sys.argv[1] if len(sys.argv) > 1 else "trl_trace"
args = GRPOConfig(output_dir=f"{run_dir}_ckpt", per_device_train_batch_size=8, num_generations=4,
                  max_completion_length=8, max_steps=3, loss_type="dapo", temperature=1.0,
                  report_to="none", use_cpu=True, save_strategy="no")
trainer = WbtraceGRPOTrainer(model=model, reward_funcs=reward_short, args=args, train_dataset=dataset,
                             processing_class=tokenizer, trace_dir=run_dir)  # <- the wbtrace lines
trainer.train()  # closes the trace writer at the end

store = TraceStore(run_dir)
for entry in store.manifest:
    print(  # noqa: T201
        f"step {entry['step']}: {entry['n_responses']} responses, {entry['n_tokens']} tokens, "
          f"entropy mean {entry['entropy_mean']:.3f} nats, reward mean {entry['reward_mean']:.2f}")
