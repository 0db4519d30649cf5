"""The one outer loop every recipe shares: set up, evaluate, step, log, save, summarise.

Everything that can fail on user input (config, model path, dataset rows) is checked before
the run directory is created, so a failed start leaves nothing half-written behind.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from bridgerl.config import Config, ConfigError, UserError, dump_yaml
from bridgerl.eval.evaluate import evaluate, write_records
from bridgerl.models.loading import load
from bridgerl.models.lora import save_adapter, save_merged
from bridgerl.tasks import build_task
from bridgerl.tasks.base import TEST, TEST_HARD, VAL, Task
from bridgerl.trainers.phases import policy
from bridgerl.trainers.recipes import STEPS
from bridgerl.trainers.state import USES_LORA, TrainState, build_state
from bridgerl.utils.distributed import init_distributed
from bridgerl.utils.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from bridgerl.utils.logging import MetricLogger, NullLogger
from bridgerl.utils.memory import held_mb, peak_cuda_mb, peak_rss_mb
from bridgerl.utils.progress import progress_display
from bridgerl.utils.seed import seed_everything
from bridgerl.utils.sharding import full_tensors

console = Console(stderr=True)


def make_engine(cfg: Config, model: torch.nn.Module, tokenizer: Any, task: Task | None = None) -> Any:
    if cfg.rollout.engine == "vllm":
        from bridgerl.rollout.vllm import VLLMEngine, check_tied_lora, engine_prompts

        if cfg.recipe in USES_LORA:  # refused before anything is built or written
            check_tied_lora(model, cfg.lora.targets)
        return VLLMEngine(cfg, model, tokenizer, prompts=engine_prompts(task, tokenizer) if task else None)
    from bridgerl.rollout.hf import HFEngine

    return HFEngine.from_config(cfg, model, tokenizer)


def run_dir_for(cfg: Config) -> Path:
    return Path(cfg.run.output_dir) / cfg.run.name


def prepare_run_dir(cfg: Config) -> Path:
    path = run_dir_for(cfg)
    if path.exists():
        if not cfg.run.overwrite:
            raise ConfigError(f"run directory {str(path)!r} exists; pick another run.name or set run.overwrite=true")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


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
        out[f"{key}_shadow/accuracy"] = eval_split(st, split, limit=limit, shadow=True)[0]
    return out


def final_eval(st: TrainState, run_dir: Path | None, prefix: str = "") -> dict[str, float]:
    """Test and hard-split accuracy (and avg@k / pass@k when eval.k > 1), completions to JSONL."""
    out: dict[str, float] = {}
    variants = [("", False)]
    if st.shadow is not None and st.cfg.eval.shadow and not prefix:
        variants.append(("shadow/", True))
    for tag, shadow in variants:
        for split, key in ((TEST, "eval"), (TEST_HARD, "eval_hard"), (VAL, "eval_val")):
            if not st.task.split(split) or (split == VAL and st.cfg.eval.split != VAL):
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
    dist = init_distributed()
    seed_everything(cfg.run.seed + dist.rank)  # ranks sample different rollouts; rank 0 = one process
    task = build_task(cfg.task)
    model, tokenizer = load(cfg.model, dist.device)
    engine = make_engine(cfg, model, tokenizer, task)
    st = build_state(cfg, task, model, tokenizer, engine, dist)
    return st, task


def _resume_point(cfg: Config) -> Path | None:
    if not cfg.resume:
        return None
    ckpt = latest_checkpoint(run_dir_for(cfg)) if run_dir_for(cfg).is_dir() else None
    if ckpt is None:
        console.print(f"resume=true: no complete checkpoint under {run_dir_for(cfg)}; starting from scratch")
    return ckpt


def _truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop rows logged after the checkpoint: the resumed run logs those steps again."""
    path = run_dir / "metrics.jsonl"
    if path.exists():
        rows = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        path.write_text("".join(r + "\n" for r in rows))


def train(cfg: Config) -> dict[str, Any]:
    t_start = time.perf_counter()
    st, _ = setup(cfg)
    main = st.dist.main
    ckpt = _resume_point(cfg)
    summary: dict[str, Any] = {"recipe": cfg.recipe, "run": cfg.run.name}
    if ckpt is not None:
        run_dir = run_dir_for(cfg)
        extra = load_checkpoint(st, ckpt)
        t_start -= extra["time_s"]  # wall time continues from the checkpoint
        summary.update(extra["initial"])
        if main:  # one writer: two ranks rewriting the file at once can lose its rows
            _truncate_metrics(run_dir, st.step)
            console.print(f"resumed from {ckpt} at step {st.step}")
    elif main:
        run_dir = prepare_run_dir(cfg)
        (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    st.dist.barrier()
    run_dir = run_dir_for(cfg)
    # Only rank 0 writes files; the other ranks compute their shares and log nothing.
    logger = MetricLogger(run_dir, tensorboard=cfg.log.tensorboard, append=ckpt is not None) if main else NullLogger()
    out_dir = run_dir if main else None
    failed = False
    try:
        if ckpt is None:
            summary.update(final_eval(st, out_dir, prefix="initial/"))
            logger.log(0, {"time_s": time.perf_counter() - t_start, "eval/accuracy": summary.get("initial/eval/accuracy"),
                           **st.timer.pop()})
        initial = {k: v for k, v in summary.items() if k.startswith("initial/")}

        def checkpoint() -> None:
            with st.timer("save"):  # every rank takes part (its RNG state, its shards)
                save_checkpoint(st, run_dir, keep_last=cfg.train.keep_last,
                                extra={"time_s": time.perf_counter() - t_start, "initial": initial})

        _loop(st, logger, t_start, checkpoint)
        summary.update(final_eval(st, out_dir))
        logger.log(st.step, {k.replace("shadow/eval/", "eval_shadow/"): v for k, v in summary.items()
                             if k in ("eval/accuracy", "eval_hard/accuracy", "shadow/eval/accuracy")})
        with st.timer("save"):
            save_outputs(st, out_dir)
    except UserError:  # found mid-run (a reward function raising on a completion): leave nothing half-written
        failed = True
        raise
    finally:
        logger.close()
        if failed and ckpt is None and main and latest_checkpoint(run_dir) is None:
            shutil.rmtree(run_dir, ignore_errors=True)
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
    st.dist.barrier()
    return summary


def _status(st: TrainState, summary: dict[str, Any]) -> str:
    # A collapsed shadow makes the cooperative gain meaningless (testbed-notes): a failed run.
    if st.shadow is not None and "shadow/eval/accuracy" in summary:
        base = summary.get("initial/eval/accuracy", 0.0)
        if base > 0 and summary["shadow/eval/accuracy"] < 0.5 * base:
            console.print(f"[red]shadow collapsed: thetahat + w scores {summary['shadow/eval/accuracy']:.3f} "
                          f"against the base model's {base:.3f}; lower optim.shadow_lr[/red]")
            return "shadow_collapsed"
    return "ok"


def _loop(st: TrainState, logger: MetricLogger, t_start: float, checkpoint: Callable[[], None]) -> None:
    cfg = st.cfg
    step_fn = STEPS[cfg.recipe]
    columns = [TextColumn(f"[bold]{cfg.recipe}[/bold]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[info]}")]
    with progress_display(columns, console, label=cfg.recipe, disable=not (cfg.log.progress and st.dist.main)) as progress:
        bar = progress.add_task("train", total=cfg.train.steps, completed=st.step, info="")
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
            if cfg.train.save_every and st.step % cfg.train.save_every == 0 and st.step < cfg.train.steps:
                checkpoint()
            info = " ".join(f"{k.split('/')[-1]}={metrics[k]:.3f}" for k in ("reward", "loss/sft", "eval/accuracy")
                            if k in metrics)
            progress.update(bar, advance=1, info=info)
            if cfg.train.max_minutes is not None and metrics["time_s"] > 60 * cfg.train.max_minutes:
                console.print(f"stopping at step {step + 1}: train.max_minutes={cfg.train.max_minutes} reached")
                break
