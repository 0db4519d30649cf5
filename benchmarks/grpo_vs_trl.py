"""Our GRPO step against TRL's `GRPOTrainer` on the same model, prompts, grader and settings.

    python benchmarks/grpo_vs_trl.py                 # embedded model, CPU fp32, natural and forced lengths
    python benchmarks/grpo_vs_trl.py --lengths natural --steps 40
    python benchmarks/grpo_vs_trl.py --force-length  # forced lengths only
    python benchmarks/grpo_vs_trl.py --config configs/smollm2-additions.yaml --sources \
        --out benchmarks/results/grpo_vs_trl_smollm2.json   # SmolLM2 shapes + each source of gain alone

What runs, side by side in one process:
- ours: `bridgerl.trainers.loop.setup(cfg)` with recipe=grpo, each step `STEPS["grpo"](st)`;
- TRL:  `trl.GRPOTrainer(...).train()` on a second copy of the same checkpoint (loaded with
  `bridgerl.models.loading.load`, so both get our tokenizer, pad and EOS tokens).
Same workload: the config's task (--config; default the embedded testbed's arith task), its rl_train
prompts (`render_prompt`, the text both feed the model, chat-templated where the task says so), its
prompts x completions per step and new-token limit (testbed: 16 x 8, 48), temperature 1, top_p 1, no
top-k, one AdamW update per batch (lr = our optim.lr, weight decay, betas, eps 1e-8, constant
schedule, grad-norm clip 1.0), CPU fp32. TRL's reward function calls the same rewards,
`task.reward_batch(examples, completions)`: the dataset carries each prompt's index into rl_train,
which TRL hands to the reward function as a column, so every completion is graded against its own
example.

--sources: ours alone, as configured and with each source of gain removed on its own (SOURCES: a
reference model although the KL term is off, old log-probs recomputed although the batch is used
once, a float32 log-softmax over the whole vocabulary, no length packing, every prompt trained and
prefilled once per sample, a static KV cache), the variants taking turns step by step on one state; step time
and per-step peak resident memory each.

Lengths: a step's time follows the *longest* completion of its batch (generation runs until the
last row stops, and both sides pad the training batch to it), and the two sides sample different
rollouts (different prompts and random streams, weights that drift apart as each trains), so at
natural lengths one 30-token straggler in a step of 4-token answers doubles that step, and a
10-step median can land anywhere from 0.7x to 1.3x (seen on the shared CPU). "forced" makes
every completion exactly --max-new-tokens long on both sides (transformers' `min_new_tokens`:
ours through the model's generation config, TRL through `generation_kwargs`), so both do the
same work every step: that is the headline comparison (top-level keys) when it was run
(--lengths both, the default; "headline_lengths" says which). Per-step mean and max lengths of
both sides are recorded under each mode.

Interleaving: TRL's loop drives the run; a `TrainerCallback` runs `--block` of our steps at the
end of every `--block` TRL steps (after `--warmup` untimed steps of each), so background load on
a shared machine hits both alike. A TRL step is timed from the end of the previous one (after
our block) to its `on_step_end`, so it contains everything Trainer does per step: data loading,
generation, grading, forward + backward, clipping, optimizer and scheduler step, and its
logging bookkeeping; one of ours is the wall time of `STEPS["grpo"](st)` plus `st.timer.pop()`
(our loop's per-step metric logging is not included). Medians over the timed steps.

TRL settings we had to choose (each recorded in the JSON under "trl_settings"):
- per_device_train_batch_size=prompts x completions (testbed: 128): in TRL the batch counts completions;
  gradient_accumulation_steps=1 and steps_per_generation=1 (so generation_batch_size=128) and
  num_iterations=1: every step generates fresh rollouts and makes exactly one update, and TRL
  skips its extra "old log-prob" forward (ratio 1, on-policy), as we do.
- loss_type="dapo": token mean over the whole accumulated batch, which is our grpo preset's
  aggregation (token_mean, global_norm); with one micro-batch on one process "bnpo" is the same.
  scale_rewards="group", epsilon=0.2 (epsilon_high unset = 0.2) as our preset.
- beta=0.0: no reference model and no KL, as our preset (loss.kl_coef=0).
- bf16=False, fp16=False: TRL's configs default to bf16=True, which would autocast the
  forward passes to bf16 (much slower on CPU; ours runs fp32).
- activation_checkpointing=False (transformers 5's name for gradient_checkpointing): TRL's
  default is True (recomputes activations in backward, ~20% slower); ours does not checkpoint.
- optim="adamw_torch" (torch.optim.AdamW with its default multi-tensor path, as ours;
  transformers' default with torch >= 2.8 is "adamw_torch_fused"), lr_scheduler_type="constant"
  (Trainer's default decays linearly), warmup_steps=0, weight_decay=our optim.weight_decay
  (Trainer's default is 0), max_grad_norm=1.0.
- use_vllm=False, use_transformers_continuous_batching=False, cache_implementation=None
  (transformers' dynamic KV cache, as our HF engine's default), torch_compile=False.
- report_to="none", logging_steps huge, log_completions=False, save_strategy="no",
  eval_strategy="no", disable_tqdm=True, dataloader_num_workers=0, no pin_memory,
  remove_unused_columns=False (keeps the index column for the grader), use_cpu=True.
Differences we did not remove (they are how TRL works, not settings): TRL computes log-probs and
entropies through its fused LM head (chunked, no full logits tensor; ours computes the logits
of the completion positions), does not pass position_ids (ours does, for left padding), shuffles
each generation batch, and its AdamW exempts biases and norm weights from weight decay (no cost
difference). TRL draws its own prompts (shuffled, 16 distinct per step, each repeated 8 times),
ours its own: the same distribution, not the same prompts; completion lengths are recorded for
both, since generation time follows them.

Threads: --threads 1 by default (both run in this process, so always with the same count). On a
shared 2-core machine two OpenMP threads make every step 10-40x slower, on and off, whenever
another process runs; one thread degrades gracefully. --threads 0 keeps torch's default.

Also recorded: our phase medians (`time/<phase>`), and TRL's broken down by wrapping its own
methods on the instance (generation = `_generate_single_turn`, grading = `_calculate_rewards`,
prepare = the rest of `_generate_and_score_completions`, fwd_bwd = `training_step` minus its
input preparation, optim = `optimizer.step` between Trainer's pre/post optimizer callbacks,
other = the rest of the step). If TRL's trainer cannot be built or run here, the JSON records
the exception under "trl_error" (and no TRL figures) instead of numbers.

Writes JSON to --out (default benchmarks/results/grpo_vs_trl.json) and prints it: settings,
the headline mode's figures at the top level (ours_step_s, trl_step_s, ratio_trl_over_ours and
its paired median, both phase breakdowns), each mode in full under "natural" / "forced"
(including trl_settings and trl_checks), and load_avg.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from typing import Any

import torch
from _report import load_avg, write_report  # benchmarks/_report.py (the script's folder is on sys.path)

from bridgerl.config_load import load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=10, help="timed steps of each (after the warm-up)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps of each")
    p.add_argument("--block", type=int, default=1, help="steps per interleaved block (divides --steps)")
    p.add_argument("--config", default=None,
                   help="a bridgerl config whose model, task, reward and shapes both sides use "
                        "(e.g. configs/smollm2-additions.yaml); default: the embedded testbed")
    p.add_argument("--prompts", type=int, default=None, help="prompts per step (default: the config's)")
    p.add_argument("--group", type=int, default=None, help="completions per prompt (default: the config's)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the config's rollout.max_new_tokens")
    p.add_argument("--lr", type=float, default=None, help="default: our optim.lr")
    p.add_argument("--lengths", choices=("natural", "forced", "both"), default="both",
                   help="natural: stop at EOS; forced: exactly --max-new-tokens tokens (min_new_tokens); both")
    p.add_argument("--force-length", action="store_true", help="shorthand for --lengths forced")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1, see the docstring; 0 = torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="model.name_or_path for both (default: the config's)")
    p.add_argument("--only", nargs="+", choices=list(SOURCES), default=None,
                   help="with --sources: these variants only ('ours' is always run)")
    p.add_argument("--sources", action="store_true",
                   help="also time ours with each source of gain removed on its own (see SOURCES), interleaved")
    p.add_argument("--no-trl", action="store_true", help="with --sources: only the sources (no TRL modes)")
    p.add_argument("--out", default="benchmarks/results/grpo_vs_trl.json")
    args = p.parse_args(argv)
    if args.steps < 1 or args.block < 1 or args.steps % args.block:
        p.error("--steps must be a positive multiple of --block")
    if args.force_length:
        args.lengths = "forced"
    cfg = load_config(args.config, ["recipe=grpo"])  # fill the shapes the command line left to the config
    r = cfg.rollout
    args.prompts = args.prompts or r.prompts_per_step
    args.group = args.group or r.num_generations
    args.max_new_tokens = args.max_new_tokens or r.max_new_tokens
    args.model = args.model or cfg.model.name_or_path
    return args


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def build_ours(args: argparse.Namespace, forced: bool):
    from bridgerl.trainers.loop import setup

    overrides = ["recipe=grpo", f"model.name_or_path={args.model}", "model.dtype=float32",
                 f"rollout.num_generations={args.group}", f"rollout.prompts_per_step={args.prompts}",
                 f"rollout.max_new_tokens={args.max_new_tokens}", "rollout.temperature=1.0", "rollout.top_p=1.0",
                 "loss.preset=grpo", "loss.kl_coef=0.0", f"run.seed={args.seed}"]
    if args.lr is not None:
        overrides.append(f"optim.lr={args.lr}")
    cfg = load_config(args.config, overrides)
    st, task = setup(cfg)
    if forced:  # transformers' generate reads it from the model's generation config: no EOS before it
        st.model.generation_config.min_new_tokens = args.max_new_tokens
    return cfg, st, task


class _Clock:
    """Accumulates wall time of wrapped methods per name (reset every step)."""

    def __init__(self) -> None:
        self.acc: dict[str, float] = {}

    def wrap(self, obj: Any, method: str, name: str) -> None:
        fn = getattr(obj, method)

        @functools.wraps(fn)
        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.acc[name] = self.acc.get(name, 0.0) + time.perf_counter() - t0

        setattr(obj, method, timed)  # instance attribute: TRL's class is untouched

    def pop(self) -> dict[str, float]:
        out, self.acc = self.acc, {}
        return out


def trl_settings(args: argparse.Namespace, cfg: Any, forced: bool) -> dict[str, Any]:
    o = cfg.optim
    gen_kwargs = {"min_new_tokens": args.max_new_tokens} if forced else None  # TRL passes it to GenerationConfig
    return dict(
        num_generations=args.group, per_device_train_batch_size=args.prompts * args.group,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
        max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
        generation_kwargs=gen_kwargs, cache_implementation=None,
        beta=0.0, loss_type="dapo", scale_rewards="group", epsilon=cfg.loss.clip_eps_low,
        mask_truncated_completions=False,
        learning_rate=o.lr, weight_decay=o.weight_decay, adam_beta1=o.beta1, adam_beta2=o.beta2, adam_epsilon=1e-8,
        optim="adamw_torch", lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=o.max_grad_norm,
        bf16=False, fp16=False, activation_checkpointing=False, use_cpu=True, torch_compile=False,
        use_vllm=False, use_transformers_continuous_batching=False,
        report_to="none", logging_steps=10**9, log_completions=False, save_strategy="no", eval_strategy="no",
        disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False, remove_unused_columns=False,
        shuffle_dataset=True, seed=args.seed, max_steps=args.warmup + args.steps,
    )


def trl_checks(trainer: Any) -> dict[str, Any]:
    """What the built trainer actually does (the settings above took effect)."""
    model = trainer.model
    return {
        "param_dtypes": sorted({str(p.dtype) for p in model.parameters()}),
        "mixed_precision": str(trainer.accelerator.mixed_precision),
        "activation_checkpointing_layers": sum(bool(getattr(m, "gradient_checkpointing", False))
                                               for m in model.modules()),
        "ref_model": trainer.ref_model is not None,
        "device": str(trainer.accelerator.device),
        "steps_per_generation": trainer.args.steps_per_generation,
        "generation_batch_size": trainer.args.generation_batch_size,
        "pad_token_id": trainer.processing_class.pad_token_id,
        "eos_token_ids": list(trainer.eos_token_ids),
    }


def run_mode(args: argparse.Namespace, forced: bool) -> dict[str, Any]:
    """One interleaved measurement (fresh states for both) at natural or forced lengths."""
    from bridgerl.models.loading import load
    from bridgerl.tasks.base import RL_TRAIN, render_prompt
    from bridgerl.trainers.recipes import STEPS

    cfg, st, task = build_ours(args, forced)
    examples = task.split(RL_TRAIN)
    ours: dict[str, Any] = {"step_s": [], "phases": [], "mean_length": [], "max_length": [], "warmup_s": []}

    def our_step(timed: bool) -> None:
        t0 = time.perf_counter()
        metrics = STEPS["grpo"](st)
        phases = st.timer.pop()
        dt = time.perf_counter() - t0
        st.step += 1
        if timed:
            ours["step_s"].append(dt)
            ours["phases"].append(phases)
            ours["mean_length"].append(metrics["completions/mean_length"])
            ours["max_length"].append(metrics["completions/max_length"])
        else:
            ours["warmup_s"].append(dt)

    res: dict[str, Any] = {"lengths": "forced" if forced else "natural"}
    trl: dict[str, Any] = {"step_s": [], "phases": [], "mean_length": [], "max_length": [], "warmup_s": []}
    try:
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import GRPOConfig, GRPOTrainer

        settings = trl_settings(args, cfg, forced)
        res["trl_settings"] = dict(settings)
        model, tok = load(cfg.model)  # a second copy of the same checkpoint, our tokenizer
        prompts = [render_prompt(task, e, tok) for e in examples]
        dataset = Dataset.from_dict({"prompt": prompts, "example_index": list(range(len(examples)))})

        def task_reward(prompts, completions, example_index, **_):  # ours: task.reward_batch on the same rows
            return task.reward_batch([examples[i] for i in example_index], list(completions))

        clock = _Clock()

        class Interleave(TrainerCallback):
            """Times each TRL step and runs our block after it (see the module docstring)."""

            def __init__(self) -> None:
                self.mark = 0.0
                self.t_opt = 0.0

            def on_train_begin(self, *a, optimizer=None, lr_scheduler=None, **kw):
                opt = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
                if opt is not None:
                    d = opt.defaults
                    res["trl_checks"]["optimizer"] = {
                        "class": type(opt).__name__, "lr": d.get("lr"), "betas": list(d.get("betas", ())),
                        "eps": d.get("eps"), "foreach": d.get("foreach"), "fused": d.get("fused"),
                        "weight_decay_per_group": [g.get("weight_decay") for g in opt.param_groups]}
                if lr_scheduler is not None:
                    res["trl_checks"]["lr_scheduler"] = type(lr_scheduler).__name__
                self.mark = time.perf_counter()

            def on_pre_optimizer_step(self, *a, **kw):
                self.t_opt = time.perf_counter()

            def on_optimizer_step(self, *a, **kw):
                clock.acc["optim"] = clock.acc.get("optim", 0.0) + time.perf_counter() - self.t_opt

            def on_step_end(self, targs, state, control, **kw):
                dt = time.perf_counter() - self.mark
                phases = clock.pop()
                logged = trainer._metrics["train"]
                k = state.global_step
                if k <= args.warmup:
                    trl["warmup_s"].append(dt)
                    if k == args.warmup:
                        for _ in range(args.warmup):
                            our_step(timed=False)
                else:
                    trl["step_s"].append(dt)
                    trl["phases"].append(phases)
                    trl["mean_length"].append(logged["completions/mean_length"][-1])
                    trl["max_length"].append(logged["completions/max_length"][-1])
                    if (k - args.warmup) % args.block == 0:
                        for _ in range(args.block):
                            our_step(timed=True)
                self.mark = time.perf_counter()

        trainer = GRPOTrainer(model=model, reward_funcs=task_reward, args=GRPOConfig(
            output_dir=tempfile.mkdtemp(prefix="bridgerl-trl-bench-"), **settings),
            train_dataset=dataset, processing_class=tok, callbacks=[Interleave()])
        clock.wrap(trainer, "_generate_single_turn", "generate")
        clock.wrap(trainer, "_calculate_rewards", "grade")
        clock.wrap(trainer, "_generate_and_score_completions", "generate_and_score")
        clock.wrap(trainer, "_prepare_inputs", "prepare_inputs")
        clock.wrap(trainer, "training_step", "training_step")
        res["trl_checks"] = trl_checks(trainer)
        with contextlib.redirect_stdout(sys.stderr):  # Trainer prints its summary dict: keep stdout JSON
            trainer.train()
        if len(trl["step_s"]) != args.steps:
            raise RuntimeError(f"TRL ran {len(trl['step_s'])} timed steps, expected {args.steps}")
    except Exception as exc:  # record why TRL could not run rather than inventing figures
        res["trl_error"] = f"{type(exc).__name__}: {exc}"
        res["trl_traceback"] = traceback.format_exc(limit=8)
        print(res["trl_traceback"], file=sys.stderr)
        if len(ours["step_s"]) < args.steps:  # still measure ours alone
            for _ in range(args.warmup - len(ours["warmup_s"])):
                our_step(timed=False)
            while len(ours["step_s"]) < args.steps:
                our_step(timed=True)

    res["ours_step_s"] = median(ours["step_s"])
    names = sorted({k for p in ours["phases"] for k in p})
    res["ours_phase_medians_s"] = {k.removeprefix("time/"): median([p.get(k, 0.0) for p in ours["phases"]])
                                   for k in names}
    res["ours_phase_medians_s"]["other"] = median([s - sum(p.values()) for s, p in zip(ours["step_s"], ours["phases"])])
    res["ours_steps_s"] = ours["step_s"]
    res["ours_warmup_s"] = ours["warmup_s"]
    res["ours_mean_completion_length"] = statistics.fmean(ours["mean_length"])
    res["ours_completion_length_per_step"] = {"mean": ours["mean_length"], "max": ours["max_length"]}
    if "trl_error" not in res:
        def trl_phase(p: dict[str, float]) -> dict[str, float]:
            gen, grade = p.get("generate", 0.0), p.get("grade", 0.0)
            return {"generate": gen, "grade": grade, "prepare": p.get("generate_and_score", 0.0) - gen - grade,
                    "fwd_bwd": p.get("training_step", 0.0) - p.get("prepare_inputs", 0.0),
                    "optim": p.get("optim", 0.0)}

        rows = [trl_phase(p) for p in trl["phases"]]
        res["trl_step_s"] = median(trl["step_s"])
        res["trl_phase_medians_s"] = {k: median([r[k] for r in rows]) for k in rows[0]}
        res["trl_phase_medians_s"]["other"] = median([s - sum(r.values()) for s, r in zip(trl["step_s"], rows)])
        res["trl_steps_s"] = trl["step_s"]
        res["trl_warmup_s"] = trl["warmup_s"]
        res["trl_mean_completion_length"] = statistics.fmean(trl["mean_length"])
        res["trl_completion_length_per_step"] = {"mean": trl["mean_length"], "max": trl["max_length"]}
        res["ratio_trl_over_ours"] = res["trl_step_s"] / res["ours_step_s"]
        # Steps ran in alternating blocks: the per-block ratio is robust to slow drifts in machine load.
        ob = [statistics.fmean(ours["step_s"][i:i + args.block]) for i in range(0, args.steps, args.block)]
        tb = [statistics.fmean(trl["step_s"][i:i + args.block]) for i in range(0, args.steps, args.block)]
        res["ratio_trl_over_ours_paired_median"] = median([t / o for t, o in zip(tb, ob)])
    return res


# -- each source of gain on its own ------------------------------------------------------------------

SOURCES = {
    "ours": "as configured",
    "with_reference_model": "a reference copy of the weights and its forward per micro-batch (KL coefficient "
                            "1e-12), as any trainer that keeps a reference model when the KL term is off",
    "recompute_old_logp": "an extra no-grad forward for the old log-probs, although the batch is used once",
    "full_vocab_logprobs": "log-probs through a float32 log-softmax of the whole [rows x tokens x vocab] "
                           "logits (ours: one row's logsumexp at a time)",
    "no_length_packing": "train.micro_batch_tokens=null: micro-batches in rollout order, padded to the "
                         "longest completion of the batch",
    "no_shared_prompt_pass": "train.share_prompts=false: every row runs its prompt through the forward and "
                             "backward passes (not only once per group)",
    "no_shared_prefill": "rollout.hf_share_prefill=false: transformers' num_return_sequences, which "
                         "prefills every prompt once per sample",
    "static_cache": "rollout.hf_cache_implementation=static (preallocated KV cache, no compile; its "
                    "prompts are prefilled once per sample)",
}


@contextlib.contextmanager
def _without(st: Any, source: str):
    """Our state with one source of gain removed for the duration of a step."""
    from bridgerl.trainers import batch as batch_mod
    from bridgerl.trainers import phases, recipes

    cfg, undo = st.cfg, []
    if source == "with_reference_model":
        st.ref = {n: p.detach().clone() for n, p in st.theta.items()}
        old_kl, cfg.loss.kl_coef = cfg.loss.kl_coef, 1e-12
        undo.append(lambda: (setattr(st, "ref", None), setattr(cfg.loss, "kl_coef", old_kl)))
    elif source == "recompute_old_logp":
        plain = recipes.rl_pass

        def rl_pass(st_, rb, **kw):
            if kw.get("old_logp") is None and kw.get("params") is None:
                width = rb.batch.completion_ids.shape[1]
                old = torch.zeros(rb.batch.completion_ids.shape)
                with torch.no_grad():
                    for rows, part in rb.batch.micro_batches(cfg.train.micro_batch_size, cfg.train.micro_batch_tokens):
                        old[rows] = batch_mod.widen(phases._forward(st_, part, None, False)[0], width)
                kw["old_logp"] = old
            return plain(st_, rb, **kw)

        recipes.rl_pass = rl_pass
        undo.append(lambda: setattr(recipes, "rl_pass", plain))
    elif source == "full_vocab_logprobs":
        plain = batch_mod.token_logprobs
        batch_mod.token_logprobs = lambda logits, tokens: torch.log_softmax(logits.float(), -1).gather(
            -1, tokens.long().unsqueeze(-1)).squeeze(-1)
        undo.append(lambda: setattr(batch_mod, "token_logprobs", plain))
    elif source == "no_length_packing":
        tokens, cfg.train.micro_batch_tokens = cfg.train.micro_batch_tokens, None
        undo.append(lambda: setattr(cfg.train, "micro_batch_tokens", tokens))
    elif source == "no_shared_prompt_pass":
        share, cfg.train.share_prompts = cfg.train.share_prompts, False
        undo.append(lambda: setattr(cfg.train, "share_prompts", share))
    elif source == "no_shared_prefill":
        share, st.engine.share_prefill = st.engine.share_prefill, False
        undo.append(lambda: setattr(st.engine, "share_prefill", share))
    elif source == "static_cache":
        impl, st.engine.cache_implementation = st.engine.cache_implementation, "static"
        undo.append(lambda: setattr(st.engine, "cache_implementation", impl))
    elif source != "ours":
        raise ValueError(source)
    try:
        yield
    finally:
        for fn in undo:
            fn()


def run_sources(args: argparse.Namespace) -> dict[str, Any]:
    """Ours as configured and with each source of gain removed on its own: one state, the variants
    taking turns step by step (after one untimed round), so that drift in the weights, the lengths
    and the machine's load reach all alike. Peak memory per step from the process's VmHWM, reset
    before each step (Linux); the model and its optimizer state are in every figure."""
    from bridgerl.utils.memory import reset_peak_memory, vm_hwm_mb
    from bridgerl.trainers.recipes import STEPS

    cfg, st, _ = build_ours(args, forced=False)
    out: dict[str, Any] = {k: {"what": v, "step_s": [], "peak_mb": [], "mean_length": [], "phases": []}
                           for k, v in SOURCES.items() if k == "ours" or not args.only or k in args.only}
    for round_ in range(args.warmup + args.steps):
        for source, rec in out.items():
            with _without(st, source):
                reset_peak_memory()
                t0 = time.perf_counter()
                metrics = STEPS["grpo"](st)
                dt = time.perf_counter() - t0
                phases = st.timer.pop()
                peak = vm_hwm_mb()
            st.step += 1
            if round_ >= args.warmup:
                rec["step_s"].append(dt)
                rec["peak_mb"].append(peak)
                rec["mean_length"].append(metrics["completions/mean_length"])
                rec["phases"].append(phases)
    for rec in out.values():
        rec["median_step_s"] = median(rec["step_s"])
        rec["max_peak_mb"] = max(rec["peak_mb"]) if rec["peak_mb"] and None not in rec["peak_mb"] else None
        phases = rec.pop("phases")
        rec["phase_medians_s"] = {k.removeprefix("time/"): median([p.get(k, 0.0) for p in phases])
                                  for k in sorted({k for p in phases for k in p})}
    base = out["ours"]["median_step_s"]
    for rec in out.values():
        rec["step_over_ours"] = rec["median_step_s"] / base if base else None
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("ACCELERATE_USE_CPU", "true")  # this comparison is CPU fp32 (bridgerl's init_distributed)
    load_start = load_avg()
    import transformers

    try:
        import trl as trl_pkg
        trl_version = trl_pkg.__version__
    except Exception as exc:  # noqa: BLE001 - recorded, run_mode reports the failure per mode
        trl_version = f"not importable: {exc}"
    cfg = load_config(args.config, ["recipe=grpo", *([f"optim.lr={args.lr}"] if args.lr is not None else [])])
    modes = ["natural", "forced"] if args.lengths == "both" else [args.lengths]
    if args.no_trl:
        modes = []
    head = "forced" if "forced" in modes else (modes or ["none"])[0]
    report: dict[str, Any] = {
        "config": args.config or "embedded testbed", "model": args.model, "device": "cpu", "dtype": "float32",
        "cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl_version},
        "steps": args.steps, "warmup_steps": args.warmup, "block": args.block,
        "prompts_per_step": args.prompts, "num_generations": args.group, "max_completion_length": args.max_new_tokens,
        "temperature": 1.0, "lr": cfg.optim.lr, "optimizer": "AdamW", "weight_decay": cfg.optim.weight_decay,
        "max_grad_norm": cfg.optim.max_grad_norm, "micro_batch_size": cfg.train.micro_batch_size,
        "micro_batch_tokens": cfg.train.micro_batch_tokens,
        "loss_aggregation": "token mean over the batch (ours: grpo preset; TRL: loss_type=dapo)",
        "seed": args.seed, "lengths_run": modes, "headline_lengths": head,
    }
    results = {}
    for mode in modes:
        print(f"[{mode}] ours vs TRL, {args.warmup} + {args.steps} steps each", file=sys.stderr, flush=True)
        results[mode] = run_mode(args, forced=mode == "forced")
    top = results.get(head, {})
    for key in ("ours_step_s", "trl_step_s", "ratio_trl_over_ours", "ratio_trl_over_ours_paired_median",
                "ours_phase_medians_s", "trl_phase_medians_s", "trl_error"):
        if key in top:
            report[key] = top[key]
    report.update(results)
    if args.sources:
        print(f"[sources] ours with each source of gain removed, {args.warmup} + {args.steps} steps each",
              file=sys.stderr, flush=True)
        report["sources"] = run_sources(args)
    report["torch_threads_at_end"] = torch.get_num_threads()
    load_end = load_avg()
    report["load_avg"] = {"start_1_5_15min": load_start, "end_1_5_15min": load_end}

    write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
