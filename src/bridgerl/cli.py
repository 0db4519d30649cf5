"""The `bridgerl` command: train, eval, pretrain, compare, plot.

    bridgerl train [CONFIG.yaml] [key=value ...]     # no arguments: BRIDGE on the embedded testbed
    bridgerl eval MODEL_DIR [--split test] [--k 8] [key=value ...]
    bridgerl pretrain [--out DIR] [--steps N]
    bridgerl compare [--recipes ...] [--seeds N] [--steps N [--jobs J] | --minutes M] [key=value ...]
    bridgerl plot RUN_DIR [RUN_DIR ...]

User errors (bad config, missing model, malformed data) print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bridgerl.config import ConfigError, load_config, split_config_args

_split_config_args = split_config_args  # its old home; it lives with the config (report/compare.py needs it too)


def _user_errors() -> tuple[type[BaseException], ...]:
    from bridgerl.models.loading import ModelLoadError
    from bridgerl.tasks.base import TaskError

    return ConfigError, TaskError, ModelLoadError


def cmd_train(ns: argparse.Namespace) -> int:
    path, overrides = split_config_args(ns.args)
    cfg = load_config(path, overrides)  # config errors surface before the heavy imports
    from bridgerl.trainers.loop import train

    summary = train(cfg)
    keys = [k for k in ("initial/eval/accuracy", "eval/accuracy", "initial/eval_hard/accuracy", "eval_hard/accuracy",
                        "shadow/eval/accuracy", "time_s", "peak_rss_mb", "state_mb", "status") if k in summary]
    if int(os.environ.get("RANK", "0")) == 0:  # one summary per run, not one per process
        print(json.dumps({k: summary[k] for k in keys}, indent=2))
    return 0


def cmd_eval(ns: argparse.Namespace) -> int:
    from bridgerl.eval.cli import run_eval

    return run_eval(ns)


def cmd_pretrain(ns: argparse.Namespace) -> int:
    from bridgerl.models.tiny import pretrain

    kwargs = {"seed": ns.seed}
    if ns.steps is not None:
        kwargs["steps"] = ns.steps
    report = pretrain(Path(ns.out), **kwargs)
    print(json.dumps(report, indent=2))
    return 0


def cmd_compare(ns: argparse.Namespace) -> int:
    from bridgerl.report.compare import run_compare

    return run_compare(ns)


def cmd_plot(ns: argparse.Namespace) -> int:
    from bridgerl.report.plots import plot_runs

    paths = plot_runs([Path(p) for p in ns.runs], Path(ns.out) if ns.out else None)
    for p in paths:
        print(p)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bridgerl", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train with a recipe (default: bridge on the embedded testbed)")
    p.add_argument("args", nargs="*", help="an optional CONFIG.yaml, then key=value overrides (e.g. recipe=grpo)")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("eval", help="evaluate a model directory: greedy pass@1, avg@k, pass@k")
    p.add_argument("model", help="a transformers model directory, or 'embedded'")
    p.add_argument("--split", default="test", help="test | test_hard | rl_train | sft_train (default: test)")
    p.add_argument("--benchmark", nargs="*", default=None,
                   help="math benchmarks by name (math500 minerva_math olympiadbench aime24 amc23 gsm8k; 'all')")
    p.add_argument("--data-root", default=None, help="folder holding the benchmark files (default: ../shared/data)")
    p.add_argument("--k", type=int, default=1, help="samples per problem for avg@k / pass@k (1 = greedy only)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N problems only")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--out", default=None, help="JSONL file (or folder, for several benchmarks) for completions")
    p.add_argument("args", nargs="*", help="task options as key=value (e.g. task.arith.train_operands=[3])")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("pretrain", help="rebuild the embedded testbed base model from scratch")
    p.add_argument("--out", default="runs/pretrain", help="output directory")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_pretrain)

    p = sub.add_parser("compare", help="run several recipes x seeds on one budget; table, report and plots")
    p.add_argument("--recipes", nargs="+", default=None)
    p.add_argument("--seeds", type=int, default=5,
                   help="run.seed 0..N-1 per recipe (default 5: the report's CIs resample seeds)")
    p.add_argument("--steps", type=int, default=None, help="equal optimizer steps per recipe")
    p.add_argument("--minutes", type=float, default=None, help="equal wall-clock per recipe")
    p.add_argument("--name", default="default")
    p.add_argument("--reward-noise", type=float, default=None, help="flip each reward with this probability")
    p.add_argument("--lam-sweep", nargs="*", type=float, default=None, help="bridge.lam values to sweep")
    p.add_argument("--meta-ablation", action="store_true",
                   help="also run bridge with bridge.meta=false (group bridge-meta-off) for the meta-objective claim")
    p.add_argument("--lr-sweep", nargs="+", type=float, default=None,
                   help="run every recipe at each of these optim.lr values and pick each recipe's rate by its "
                        "final accuracy on the task's val split (never test)")
    p.add_argument("--lr-extend", action="store_true",
                   help="with --lr-sweep: where a recipe's best rate is the highest or lowest it tried, also run "
                        "the next rate past it (1-3-10 series), until the best is inside")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once, each a child process with cpus/JOBS torch threads and its output in "
                        "<run>.log (default 1: one after the other, in this process; not with --minutes)")
    p.add_argument("args", nargs="*", help="a CONFIG.yaml and/or key=value overrides applied to every run")
    p.set_defaults(fn=cmd_compare)

    p = sub.add_parser("plot", help="draw the curves of existing runs")
    p.add_argument("runs", nargs="+", help="run folders (each its own line, unless its compare folder lists it as "
                                           "a seed of a group: then a mean with a 95%% CI band) or compare folders")
    p.add_argument("--out", default=None, help="output folder (default: the first run's parent)")
    p.set_defaults(fn=cmd_plot)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    # key=value overrides after an option (`eval MODEL --split val task.x=1`) are overrides too;
    # argparse stops collecting positionals at the first option, so they come back as extras
    if extra and hasattr(ns, "args") and all("=" in a and not a.startswith("-") for a in extra):
        ns.args = [*ns.args, *extra]
    elif extra:
        parser.parse_args(argv)  # exits with argparse's own "unrecognized arguments" line
    try:
        code = ns.fn(ns)
    except _user_errors() as exc:
        print(f"bridgerl {ns.command}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)
