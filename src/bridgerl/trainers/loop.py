"""The one outer loop every recipe shares: set up, evaluate, step, log, save, summarise.

Everything that can fail on user input (config, model path, dataset rows) is checked before
the run directory is created, so a failed start leaves nothing half-written behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from bridgerl.config import PRETRAINED_LR, TESTBED_MODELS, Config, UserError
from bridgerl.config_load import dump_yaml
from bridgerl.eval.evaluate import evaluate, write_records
from bridgerl.models.loading import load
from bridgerl.models.lora import save_adapter, save_merged
from bridgerl.tasks import build_task
from bridgerl.tasks.base import TEST, TEST_HARD, VAL, Task
from bridgerl.trainers.lengths import check_lengths
from bridgerl.trainers.phases import policy
from bridgerl.trainers.recipes import STEPS
from bridgerl.trainers.state import USES_LORA, TrainState, build_state
from bridgerl.utils.distributed import init_distributed
from bridgerl.utils.checkpoint import PREFIX, complete_checkpoints, latest_checkpoint, load_checkpoint, save_checkpoint
from bridgerl.utils.interrupt import RunInterrupted, StopRequest
from bridgerl.utils.logging import MetricLogger, NullLogger, quiet_transformers
from bridgerl.utils.memory import held_mb, peak_cuda_mb, peak_rss_mb, return_freed_memory, trim_freed_memory
from bridgerl.utils.progress import progress_display
from bridgerl.utils.rundir import INTERRUPTED, Start, plan_start
from bridgerl.utils.seed import seed_everything
from bridgerl.utils.sharding import full_tensors

console = Console(stderr=True)


def rates_line(cfg: Config) -> str:
    """The rates this run trains at, and where a default came from (the toy's never reach a real model)."""
    o = cfg.optim
    line = f"rates: theta {o.lr:g}"
    if cfg.recipe == "cold-start" and cfg.baseline.cold_start_rl_lr is not None:
        line += f" (SFT stage), then {cfg.baseline.cold_start_rl_lr:g} (RL stage)"
    if cfg.recipe in USES_LORA:
        line += f", w {o.lora_lr:g}"
        if cfg.bridge.meta:
            line += f", thetahat {o.shadow_lr if o.shadow_lr is not None else o.lr:g}"
    if cfg.recipe in o.recipe_lr and o.lr == o.recipe_lr[cfg.recipe]:
        return line + f" (theta's from optim.recipe_lr, this config's rate for {cfg.recipe})"
    if cfg.model.name_or_path in TESTBED_MODELS:
        return line + " (unset rates: the testbed's, chosen on its val split)"
    if o.lr == PRETRAINED_LR.get(cfg.recipe):
        return line + " (the default for a pretrained model, TRL's; set optim.lr to choose)"
    return line


def say(message: str) -> None:
    """One line on the console, never wrapped or styled (paths are copied from it)."""
    console.print(message, soft_wrap=True, markup=False, highlight=False)


def make_engine(cfg: Config, model: torch.nn.Module, tokenizer: Any, task: Task | None = None) -> Any:
    if cfg.rollout.engine == "vllm":
        from bridgerl.rollout.vllm import VLLMEngine, check_tied_lora, engine_prompts

        if cfg.recipe in USES_LORA:  # refused before anything is built or written
            check_tied_lora(model, cfg.lora.targets)
        return VLLMEngine(cfg, model, tokenizer, prompts=engine_prompts(task, tokenizer) if task else None)
    from bridgerl.rollout.hf import HFEngine

    return HFEngine.from_config(cfg, model, tokenizer)


def prepare_run_dir(start: Start, cfg: Config) -> None:
    """Create the run folder (rank 0), deleting an old one only where plan_start allowed it."""
    if start.action in ("overwrite", "restart") and start.run_dir.exists():
        shutil.rmtree(start.run_dir)
    start.made_output_dir = not start.run_dir.parent.exists()
    start.run_dir.mkdir(parents=True, exist_ok=True)
    (start.run_dir / "config.yaml").write_text(dump_yaml(cfg))


def eval_split(st: TrainState, split: str, *, limit: int | None = None, shadow: bool = False,
               k: int = 1) -> tuple[float, Any]:
    """Accuracy on a split; each rank evaluates its shard, the numbers are combined exactly."""
    cfg = st.cfg
    examples = st.task.split(split)[:limit] if limit else st.task.split(split)
    mine = st.dist.shard(examples)
    n_mine = len(mine)
    if st.sharded and examples:
        # Sharded weights are gathered by all ranks together, so every rank must generate the same
        # batches: pad the shorter shards with repeats, whose results are dropped below.
        width = -(-len(examples) // st.dist.world)
        mine = mine + examples[: width - n_mine]
    max_new = cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens
    with st.timer("eval"), policy(st, shadow):
        res = evaluate(st.engine, st.tokenizer, st.task, mine, max_new_tokens=max_new,
                       batch_size=cfg.eval.batch_size, k=k, temperature=cfg.eval.temperature, keep=n_mine)
    if st.dist.world > 1:  # every metric is a mean over problems: weight by shard sizes
        n = st.dist.sum(n_mine)
        res.metrics = {key: st.dist.sum(v * n_mine) / n for key, v in sorted(res.metrics.items())}
        res.accuracy = res.metrics["accuracy"]
        res.records = [r for part in st.dist.gather(res.records) for r in part]
    return res.accuracy, res


def periodic_eval(st: TrainState) -> dict[str, float]:
    limit, split = st.cfg.eval.max_examples, st.cfg.eval.split
    key = "eval" if split == TEST else f"eval_{split}"  # val curves are never mistaken for test ones
    out = {f"{key}/accuracy": eval_split(st, split, limit=limit)[0]}
    if st.shadow is not None and st.cfg.eval.shadow:
        out[f"shadow/{key}/accuracy"] = eval_split(st, split, limit=limit, shadow=True)[0]
    return out


def final_splits(cfg: Config) -> tuple[tuple[str, str], ...]:
    """(split, metric prefix) scored at the start and the end: test and the hard split, or val alone
    under eval.split=val, so that a run made for choosing (a rate sweep) never shows a test number."""
    if cfg.eval.split == VAL:
        return ((VAL, "eval_val"),)
    return ((TEST, "eval"), (TEST_HARD, "eval_hard"))


def final_eval(st: TrainState, run_dir: Path | None, prefix: str = "") -> dict[str, float]:
    """Accuracy on `final_splits` (and avg@k / pass@k when eval.k > 1), completions to JSONL."""
    out: dict[str, float] = {}
    variants = [("", False)]
    if st.shadow is not None and st.cfg.eval.shadow and not prefix:
        variants.append(("shadow/", True))
    for tag, shadow in variants:
        for split, key in final_splits(st.cfg):
            if not st.task.split(split):
                continue
            acc, res = eval_split(st, split, shadow=shadow, k=st.cfg.eval.k)
            for name, value in res.metrics.items():
                out[f"{prefix}{tag}{key}/{name}"] = value
            if run_dir is not None:
                (run_dir / "completions").mkdir(exist_ok=True)
                stem = f"{prefix.strip('/').replace('/', '_') or 'final'}{'_shadow' if shadow else ''}_{split}"
                write_records(run_dir / "completions" / f"{stem}.jsonl", res.records)
    return out


def save_outputs(st: TrainState, run_dir: Path | None) -> None:
    """The deployed model (theta + w merged), the adapter and the shadow (thetahat + w).

    Every rank calls it; rank 0 (run_dir given) writes. Sharded weights are gathered whole first.
    """
    cfg = st.cfg
    theta, shadow = None, st.shadow
    if st.sharded:  # state_dict, not named_parameters: tied weights (lm_head) appear under both names
        theta = full_tensors(st.model.state_dict())
        shadow = full_tensors(st.views["shadow"].state_dict()) if "shadow" in st.views else None
    if run_dir is None:
        return
    save_merged(st.model, st.tokenizer, run_dir / "final", overrides=theta)
    if st.lora:
        save_adapter(st.model, run_dir / "adapter", targets=cfg.lora.targets, r=cfg.lora.r,
                     alpha=cfg.lora.alpha, dropout=cfg.lora.dropout, base_model_name_or_path=cfg.model.name_or_path)
    if shadow is not None:
        save_merged(st.model, st.tokenizer, run_dir / "shadow", overrides=shadow)  # thetahat + w


def setup(cfg: Config) -> tuple[TrainState, Task]:
    """Everything that can reject user input, before any file is written."""
    if cfg.train.return_freed_memory:  # before the model's tensors are allocated
        return_freed_memory()
    dist = init_distributed()
    quiet_transformers()
    seed_everything(cfg.run.seed + dist.rank)  # ranks sample different rollouts; rank 0 = one process
    task = build_task(cfg.task)
    model, tokenizer = load(cfg.model, dist.device)
    check_lengths(cfg, task, tokenizer, model, say=say if dist.main else None)
    engine = make_engine(cfg, model, tokenizer, task)
    st = build_state(cfg, task, model, tokenizer, engine, dist)
    if cfg.train.trim_after_phases:
        st.timer.after = trim_freed_memory
    return st, task


def _truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop rows logged after the checkpoint: the resumed run logs those steps again."""
    path = run_dir / "metrics.jsonl"
    if path.exists():
        rows = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        path.write_text("".join(r + "\n" for r in rows))


def train(cfg: Config) -> dict[str, Any]:
    """Run cfg to the end and return its summary.

    On SIGINT / SIGTERM the step in progress finishes, is checkpointed, summary.json says
    "interrupted", and RunInterrupted is raised (utils/interrupt.py); a second signal abandons the
    step. A signal after the last step lets the run finish.
    """
    start = plan_start(cfg)  # refusals read files only: before anything loads or is written
    t_start = time.perf_counter()
    st, _ = setup(cfg)  # a signal here ends the process as usual: nothing is written yet
    with StopRequest() as stop:
        try:
            return _train(st, start, stop, t_start)
        except KeyboardInterrupt:  # a second signal: abandon the step in progress
            raise _abandoned(cfg, start, stop) from None


def _train(st: TrainState, start: Start, stop: StopRequest, t_start: float) -> dict[str, Any]:
    cfg = st.cfg
    main, run_dir, ckpt = st.dist.main, start.run_dir, start.checkpoint
    summary: dict[str, Any] = {"recipe": cfg.recipe, "run": cfg.run.name}
    if ckpt is not None:
        extra = load_checkpoint(st, ckpt)
        t_start -= extra["time_s"]  # wall time continues from the checkpoint
        summary.update(extra["initial"])
        if main:  # one writer: two ranks rewriting the file at once can lose its rows
            _truncate_metrics(run_dir, st.step)
    elif main:
        prepare_run_dir(start, cfg)
    start.prepared = True
    if main:
        how = {"resume": f"resumed from {ckpt}", "restart": "restarted: no checkpoint to resume from yet",
               "overwrite": "replaced: run.overwrite=true"}.get(start.action, "new")
        say(f"run folder: {run_dir} ({how})")
        say(rates_line(cfg))
    st.dist.barrier()
    # Only rank 0 writes files; the other ranks compute their shares and log nothing.
    logger = MetricLogger(run_dir, tensorboard=cfg.log.tensorboard, append=ckpt is not None) if main else NullLogger()
    out_dir = run_dir if main else None
    failed = False
    try:
        if ckpt is None:
            summary.update(final_eval(st, out_dir, prefix="initial/"))
            key = final_splits(cfg)[0][1]
            logger.log(0, {"time_s": time.perf_counter() - t_start, f"{key}/accuracy": summary.get(f"initial/{key}/accuracy"),
                           **st.timer.pop()})
        initial = {k: v for k, v in summary.items() if k.startswith("initial/")}
        saved = {"step": st.step if ckpt is not None else None, "path": ckpt}

        def checkpoint() -> None:
            if saved["step"] == st.step:  # e.g. a signal right after a periodic checkpoint
                return
            with st.timer("save"):  # every rank takes part (its RNG state, its shards)
                saved["path"] = save_checkpoint(st, run_dir, keep_last=cfg.train.keep_last,
                                                extra={"time_s": time.perf_counter() - t_start, "initial": initial})
            saved["step"] = st.step

        if _loop(st, logger, t_start, checkpoint, stop):
            checkpoint()
            summary.update(steps=st.step, time_s=time.perf_counter() - t_start, status=INTERRUPTED,
                           checkpoint=str(saved["path"]))
            if main:
                (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            st.dist.barrier()
            raise RunInterrupted(stop.signum, run_dir, st.step, cfg.train.steps, saved["path"])
        summary.update(final_eval(st, out_dir))
        logger.log(st.step, {k: v for k, v in summary.items()
                             if k in ("eval/accuracy", "eval_hard/accuracy", "shadow/eval/accuracy", "eval_val/accuracy",
                                      "shadow/eval_val/accuracy")})
        with st.timer("save"):
            save_outputs(st, out_dir)
    except UserError:  # found mid-run (a reward function raising on a completion): leave nothing half-written
        failed = True
        raise
    finally:
        logger.close()
        # every start but a resume wrote this folder from scratch (plan_start / prepare_run_dir): without a
        # checkpoint it holds nothing to keep
        if failed and main and latest_checkpoint(run_dir) is None:
            shutil.rmtree(run_dir, ignore_errors=True)
            if start.made_output_dir and not any(run_dir.parent.iterdir()):
                run_dir.parent.rmdir()
    summary["steps"] = st.step
    summary["time_s"] = time.perf_counter() - t_start
    summary["peak_rss_mb"] = peak_rss_mb()
    held = [*st.model.parameters(), *(st.shadow or {}).values(), *(st.ref or {}).values()]
    summary["state_mb"] = held_mb(held, st.optimizers.values())
    if (cuda := peak_cuda_mb()) is not None:
        summary["peak_cuda_mb"] = cuda
    summary["status"] = _status(st, summary)
    if main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        say(f"run folder: {run_dir} (summary.json, metrics.jsonl, final/"
            f"{', shadow/' if st.shadow is not None else ''}{', adapter/' if st.lora else ''})")
    st.dist.barrier()
    return summary


def _abandoned(cfg: Config, start: Start, stop: StopRequest) -> RunInterrupted:
    """A second signal left the step half-done: the run resumes from its last complete checkpoint."""
    signum = stop.signum or signal.SIGINT
    if not start.prepared:  # stopped during set-up: the folder (maybe an old run) is untouched
        return RunInterrupted(signum, start.run_dir, 0, cfg.train.steps, None, written=False)
    ckpts = complete_checkpoints(start.run_dir)
    ckpt = ckpts[-1] if ckpts else None
    step = int(ckpt.name.removeprefix(PREFIX)) if ckpt else 0
    summary = start.run_dir / "summary.json"
    if int(os.environ.get("RANK", "0")) == 0 and not summary.exists():
        summary.write_text(json.dumps({"recipe": cfg.recipe, "run": cfg.run.name, "steps": step,
                                       "status": INTERRUPTED, "checkpoint": str(ckpt) if ckpt else None}, indent=2))
    return RunInterrupted(signum, start.run_dir, step, cfg.train.steps, ckpt, abandoned=True)


def _agree(st: TrainState, *flags: bool) -> list[bool]:
    """Each flag true on every rank if true on any (all ranks must stop or save at the same step)."""
    if st.dist.world == 1:
        return list(flags)
    summed = st.dist.mean_metrics({str(i): float(f) for i, f in enumerate(flags)})
    return [summed[str(i)] > 0 for i in range(len(flags))]


def _status(st: TrainState, summary: dict[str, Any]) -> str:
    # A collapsed shadow makes the cooperative gain meaningless (testbed-notes): a failed run.
    key = final_splits(st.cfg)[0][1]  # test, or val in a run made for choosing
    if st.shadow is not None and f"shadow/{key}/accuracy" in summary:
        base, shadow = summary.get(f"initial/{key}/accuracy", 0.0), summary[f"shadow/{key}/accuracy"]
        if base > 0 and shadow < 0.5 * base:
            console.print(f"[red]shadow collapsed: thetahat + w scores {shadow:.3f} "
                          f"against the base model's {base:.3f}; lower optim.shadow_lr[/red]")
            return "shadow_collapsed"
    return "ok"


def _loop(st: TrainState, logger: MetricLogger, t_start: float, checkpoint: Callable[[], None],
          stop: StopRequest) -> bool:
    """The steps; True if a signal stopped them (after a complete step, every rank at the same one)."""
    cfg = st.cfg
    step_fn = STEPS[cfg.recipe]
    columns = [TextColumn(f"[bold]{cfg.recipe}[/bold]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[info]}")]
    last_save = time.perf_counter()
    with progress_display(columns, console, label=cfg.recipe, disable=not (cfg.log.progress and st.dist.main)) as progress:
        bar = progress.add_task("train", total=cfg.train.steps, completed=st.step, info="")
        stop.on_signal = lambda: progress.update(bar, info="stopping after this step (again: abort now)")
        if _agree(st, stop.requested)[0]:
            return True
        for step in range(st.step, cfg.train.steps):
            st.step = step
            t0 = time.perf_counter()
            metrics = step_fn(st)
            metrics["step_time"] = time.perf_counter() - t0
            if cfg.eval.every and (step + 1) % cfg.eval.every == 0 and step + 1 < cfg.train.steps:
                metrics.update(periodic_eval(st))
            metrics.update(st.timer.pop())
            metrics["time_s"] = time.perf_counter() - t_start
            metrics = st.dist.mean_metrics(metrics)
            st.step = step + 1
            if (step + 1) % cfg.train.log_every == 0 or step + 1 == cfg.train.steps:
                logger.log(step + 1, metrics)
            due = bool(cfg.train.checkpoint_minutes) and time.perf_counter() - last_save > 60 * cfg.train.checkpoint_minutes
            stopping, due = _agree(st, stop.requested, due)
            if st.step < cfg.train.steps and (due or (cfg.train.save_every and st.step % cfg.train.save_every == 0)):
                checkpoint()
                last_save = time.perf_counter()
            info = " ".join(f"{k.split('/')[-1]}={metrics[k]:.3f}" for k in ("reward", "loss/sft", "eval/accuracy")
                            if k in metrics)
            progress.update(bar, advance=1, info=info)
            if stopping:
                return True
            if cfg.train.max_minutes is not None and metrics["time_s"] > 60 * cfg.train.max_minutes:
                console.print(f"stopping at step {step + 1}: train.max_minutes={cfg.train.max_minutes} reached")
                break
    stop.on_signal = None
    return False
