"""The `bridgerl` command: train, eval, pretrain, compare, plot.

    bridgerl train [CONFIG.yaml] [key=value ...]     # no arguments: BRIDGE on the embedded testbed
    bridgerl eval MODEL_DIR [--split test] [--k 8] [key=value ...]
    bridgerl pretrain [--out DIR] [--steps N]
    bridgerl compare [--recipes ...] [--seeds N] [--steps N [--jobs J] | --minutes M] [key=value ...]
    bridgerl plot RUN_DIR [RUN_DIR ...]

User errors (bad config, missing model, malformed data) print one line and exit with 2. Ctrl-C or
SIGTERM during training checkpoints the last complete step and prints one line with the command that
resumes it (exit 130 / 143).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import typing
from pathlib import Path
from typing import Any

from bridgerl.config import ConfigError
from bridgerl.config_load import load_config, split_config_args

_split_config_args = split_config_args  # its old home; it lives with the config (report/compare.py needs it too)


def _user_errors() -> tuple[type[BaseException], ...]:
    from bridgerl.models.loading import ModelLoadError
    from bridgerl.tasks.base import TaskError

    return ConfigError, TaskError, ModelLoadError


def resume_hint(ns: argparse.Namespace) -> str:
    """How to continue an interrupted run: the same command with resume=true (run.overwrite dropped)."""
    if ns.command == "compare":
        return "run the same bridgerl compare command again to continue (finished runs are skipped, this one resumes)"
    args = [a for a in ns.args if not a.startswith(("resume=", "run.overwrite="))]
    command = shlex.join(["bridgerl", "train", *args, "resume=true"])
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"resume with the same launch command plus resume=true (... -m {command})"
    return f"resume with: {command}"


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


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (naming --help), exit code 2, like every other user error."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, unless the help already names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if "default" not in help_text and action.default is not argparse.SUPPRESS and action.option_strings:
            help_text += " (default: %(default)s)"
        return help_text


def _train_epilog() -> str:
    from bridgerl import config

    return (f"recipes (recipe=NAME, default bridge): {', '.join(config.RECIPES)}\n"
            f"configs/*.yaml hold one file per recipe. Every key=value is a field of the typed config, each documented\n"
            f"in src/bridgerl/config.py (here: {config.__file__}); e.g. train.steps=50 run.name=mine resume=true\n"
            "An existing run folder is never replaced: resume=true continues it, run.overwrite=true deletes it first.")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bridgerl", description=__doc__.split("\n")[0], formatter_class=_Formatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, formatter_class=_Formatter, **kwargs)

    p = add("train", "train with a recipe (default: bridge on the embedded testbed)", epilog=_train_epilog())
    p.add_argument("args", nargs="*", metavar="ARG",
                   help="an optional CONFIG.yaml, then key=value overrides (e.g. recipe=grpo train.steps=50)")
    p.set_defaults(fn=cmd_train)

    p = add("eval", "evaluate a model directory: greedy pass@1; with --k > 1 also sampled avg@k and pass@k")
    p.add_argument("model", help="a transformers model directory (e.g. runs/default/final), or 'embedded'")
    p.add_argument("--split", default="test", help="test | test_hard | val | rl_train | sft_train")
    p.add_argument("--benchmark", nargs="*", default=None,
                   help="math benchmarks by name (math500 minerva_math olympiadbench aime24 amc23 gsm8k; 'all'); "
                        "default: none, the task's --split")
    p.add_argument("--data-root", default=None, help="folder holding the benchmark files (default: ../shared/data)")
    p.add_argument("--k", type=int, default=1,
                   help="samples per problem for sampled avg@k / pass@k, besides greedy pass@1 (1 = greedy only)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the k samples")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="tokens generated per answer (default: eval.max_new_tokens, else rollout.max_new_tokens; "
                        "1024 for --benchmark)")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N problems only (default: all)")
    p.add_argument("--batch-size", type=int, default=None, help="prompts per generate call (default: eval.batch_size)")
    p.add_argument("--out", default=None,
                   help="JSONL file (or folder, for several benchmarks) for completions (default: none written)")
    p.add_argument("args", nargs="*", metavar="ARG", help="task options as key=value (e.g. task.arith.train_operands=[3])")
    p.set_defaults(fn=cmd_eval)

    p = add("pretrain", "rebuild the embedded testbed base model from scratch")
    p.add_argument("--out", default="runs/pretrain", help="output directory")
    p.add_argument("--steps", type=int, default=None, help="pretraining steps (default: models/tiny.py's)")
    p.add_argument("--seed", type=int, default=0, help="initialisation and data seed")
    p.set_defaults(fn=cmd_pretrain)

    p = add("compare", "run several recipes x seeds on one budget; table, report and plots")
    p.add_argument("--recipes", nargs="+", default=None,
                   help="recipes to run, 'base' = the starting model (default: base and every recipe)")
    p.add_argument("--seeds", type=int, default=5,
                   help="seeds per recipe, run.seed = 0..N-1 (default 5: the report's CIs resample seeds)")
    p.add_argument("--steps", type=int, default=None, help="equal optimizer steps per recipe (default: train.steps)")
    p.add_argument("--minutes", type=float, default=None, help="equal wall-clock per recipe (default: off)")
    p.add_argument("--name", default="default", help="writes <run.output_dir>/compare-NAME/")
    p.add_argument("--reward-noise", type=float, default=None,
                   help="flip each reward with this probability (default: rollout.reward_noise)")
    p.add_argument("--lam-sweep", nargs="*", type=float, default=None, help="bridge.lam values to sweep (default: none)")
    p.add_argument("--meta-ablation", action="store_true",
                   help="also run bridge with bridge.meta=false (group bridge-meta-off) for the meta-objective claim")
    p.add_argument("--lr-sweep", nargs="+", type=float, default=None,
                   help="run every recipe at each of these optim.lr values and pick each recipe's rate by its "
                        "final accuracy on the task's val split, never test (default: none)")
    p.add_argument("--lr-extend", action="store_true",
                   help="with --lr-sweep: where a recipe's best rate is the highest or lowest it tried, also run "
                        "the next rate past it (1-3-10 series), until the best is inside")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once, each a child process with cpus/JOBS torch threads and its output in "
                        "<run>.log (default 1: one after the other, in this process; not with --minutes)")
    p.add_argument("args", nargs="*", metavar="ARG", help="a CONFIG.yaml and/or key=value overrides applied to every run")
    p.set_defaults(fn=cmd_compare)

    p = add("plot", "draw the curves of existing runs")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run folders (each its own line, unless its compare folder lists it as a seed of a group: "
                        "then a mean with a 95%% CI band) or compare folders")
    p.add_argument("--out", default=None, help="output folder (default: the first run's parent)")
    p.set_defaults(fn=cmd_plot)
    return parser


def overrides_first(argv: list[str]) -> list[str]:
    """`key=value` words moved ahead of the options (after the command and any leading config file),
    so that an option taking a list (`compare --recipes a b`, `--lr-sweep 1e-3 1e-4`) does not
    swallow the overrides that follow it. A key=value word is never a recipe name, rate or lam."""
    if not argv or argv[0].startswith("-"):
        return argv
    rest = argv[1:]
    lead = 0
    while lead < len(rest) and not rest[lead].startswith("-"):
        lead += 1
    kv = [a for a in rest[lead:] if "=" in a and not a.startswith("-")]
    after = [a for a in rest[lead:] if not ("=" in a and not a.startswith("-"))]
    return [argv[0], *rest[:lead], *kv, *after]


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    # key=value words after an option (`eval MODEL --split val task.x=1`) are overrides too: moved
    # ahead of the options, where argparse collects positionals; anything else unknown is refused
    ns = parser.parse_args(overrides_first(list(sys.argv[1:] if argv is None else argv)))
    from bridgerl.utils.interrupt import RunInterrupted

    try:
        code = ns.fn(ns)
    except _user_errors() as exc:
        print(f"bridgerl {ns.command}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except RunInterrupted as exc:  # checkpoint and summary written: one line on how to continue
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"bridgerl {ns.command}: {exc.describe(resume_hint(ns))}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # outside a training step (loading, evaluating, plotting): nothing to save
        hint = f"; {resume_hint(ns)}" if ns.command == "compare" else ""
        print(f"bridgerl {ns.command}: interrupted{hint}", file=sys.stderr)
        sys.exit(130)
    sys.exit(code)
