"""Loading the typed config (`bridgerl.config`): defaults, a YAML file, Python values and dotted
`key=value` overrides, checked after every load, and written back as YAML.

Loading rejects an unknown key (naming the valid ones), a value of the wrong type, and a value
outside its allowed set, each with one line.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from bridgerl.config import (CHOICES, DEFAULT_NEW_TOKENS, LEAN_SHADOW_FSDP, PRETRAINED_LR, PRETRAINED_MICRO_BATCH,
                             RECIPE_LR, TESTBED_EVAL_TOKENS, TESTBED_LORA_LR, TESTBED_MODELS, TESTBED_ROLLOUT_TOKENS,
                             TESTBED_SHADOW_LR, Config, ConfigError)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; allow int -> float. Raise ConfigError."""
    if tp is Any:  # a file name from YAML, or an object from Python (checked where it is used)
        return value
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
    if origin is dict:
        key_tp, item_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {_coerce(k, key_tp, key): _coerce(v, item_tp, f"{key}.{k}") for k, v in value.items()}
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
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}")
    checks = [
        (cfg.train.steps >= 0, "train.steps must be >= 0"),
        (cfg.rollout.num_generations >= 2, "rollout.num_generations must be >= 2 (group advantages need a group)"),
        (cfg.rollout.prompts_per_step >= 1, "rollout.prompts_per_step must be >= 1"),
        (cfg.rollout.max_new_tokens >= 1, "rollout.max_new_tokens must be >= 1"),
        (cfg.rollout.temperature > 0, "rollout.temperature must be > 0"),
        (0 < cfg.rollout.top_p <= 1, "rollout.top_p must be in (0, 1]"),
        (0 <= cfg.rollout.reward_noise < 0.5, "rollout.reward_noise must be in [0, 0.5)"),
        (0 <= cfg.task.arith.trace_error_rate <= 1, "task.arith.trace_error_rate must be in [0, 1]"),
        (cfg.rollout.vllm_importance_sampling_cap >= 1.0,
         "rollout.vllm_importance_sampling_cap must be >= 1 (below 1 it would shrink every token's loss)"),
        (0 < cfg.bridge.lam <= 1, "bridge.lam must be in (0, 1]"),
        (not (cfg.rollout.engine == "vllm" and cfg.recipe == "bridge" and cfg.bridge.meta
              and cfg.bridge.shadow_rollouts == "own"),
         "bridge.shadow_rollouts=own samples from thetahat + w, which the vLLM engine does not hold; "
         "use bridge.shadow_rollouts=shared with rollout.engine=vllm (or rollout.engine=hf)"),
        (0 < cfg.bridge.lam_start <= 1, "bridge.lam_start must be in (0, 1]"),
        (not (cfg.bridge.lean_shadow and cfg.train.sharding == "fsdp"), LEAN_SHADOW_FSDP),
        (cfg.lora.r >= 1, "lora.r must be >= 1"),
        (0 <= cfg.lora.dropout < 1, "lora.dropout must be in [0, 1)"),
        (cfg.optim.lr > 0 and cfg.optim.lora_lr > 0, "optim.lr and optim.lora_lr must be > 0"),
        (set(cfg.optim.recipe_lr) <= set(CHOICES["recipe"]),
         f"optim.recipe_lr names no recipe {sorted(set(cfg.optim.recipe_lr) - set(CHOICES['recipe']))}; "
         f"its keys are recipes: {', '.join(CHOICES['recipe'])}"),
        (all(v > 0 for v in cfg.optim.recipe_lr.values()), "optim.recipe_lr: every rate must be > 0"),
        (cfg.baseline.cold_start_rl_lr is None or cfg.baseline.cold_start_rl_lr > 0,
         "baseline.cold_start_rl_lr must be > 0 (or null: optim.lr)"),
        (all(0 <= b <= 1 for b in (cfg.baseline.chord_phi_mu, cfg.baseline.chord_mu_peak, cfg.baseline.chord_mu_valley)),
         "baseline.chord_phi_mu, chord_mu_peak and chord_mu_valley must be in [0, 1]"),
        (cfg.baseline.chord_warmup_steps >= 0 and cfg.baseline.chord_decay_steps >= 0,
         "baseline.chord_warmup_steps and chord_decay_steps must be >= 0"),
        (cfg.train.sft_batch_size >= 1, "train.sft_batch_size must be >= 1"),
        (cfg.train.micro_batch_size is None or cfg.train.micro_batch_size >= 1,
         "train.micro_batch_size must be >= 1 (or null: the whole batch)"),
        (cfg.train.micro_batch_tokens is None or cfg.train.micro_batch_tokens >= 1,
         "train.micro_batch_tokens must be >= 1 (or null: chunks of train.micro_batch_size rows in rollout order)"),
        (cfg.eval.k >= 1, "eval.k must be >= 1"),
        (all(isinstance(f, str) or callable(f) for f in cfg.task.reward_funcs),
         "task.reward_funcs: give each as 'pkg.module:function' or 'path/to/file.py:function' (or a callable)"),
        (cfg.task.reward_weights is None or len(cfg.task.reward_weights) == len(cfg.task.reward_funcs),
         f"task.reward_weights needs one weight per task.reward_funcs entry ({len(cfg.task.reward_funcs)})"),
        (math.isfinite(cfg.task.accuracy_threshold), "task.accuracy_threshold must be a finite number"),
        (0 <= cfg.task.user.val_fraction < 1 and 0 <= cfg.task.user.test_fraction < 1
         and cfg.task.user.val_fraction + cfg.task.user.test_fraction < 1,
         "task.user.val_fraction and test_fraction must be in [0, 1) and leave some rows to train on"),
        (cfg.train.checkpoint_minutes >= 0, "train.checkpoint_minutes must be >= 0 (0 = off)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def get_path(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def split_config_args(args: list[str]) -> tuple[str | None, list[str]]:
    """(the first CONFIG.yaml, the key=value overrides) of a command line's positional arguments."""
    path, overrides = None, []
    for a in args:
        if "=" not in a and a.endswith((".yaml", ".yml")) and path is None:
            path = a
        else:
            overrides.append(a)
    return path, overrides


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, *,
                values: dict[str, Any] | None = None, base: Config | None = None) -> Config:
    """Defaults (or a copy of `base`), then the YAML file (if any), then `values` (a mapping, nested or
    with dotted keys, whose values may be Python objects), then the key=value overrides; validated."""
    cfg = _copy(base) if base is not None else Config()
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
    if values:
        _apply(cfg, _nest(values))
    if overrides:
        _apply(cfg, _dotted_to_nested(overrides))
    return finish(cfg)


def _nest(data: dict[str, Any]) -> dict[str, Any]:
    """{"train.steps": 2, "task": {...}} -> nested mappings (dotted keys split, values kept as they are)."""
    nested: dict[str, Any] = {}
    for key, value in data.items():
        *parents, last = str(key).split(".")
        node = nested
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key {key!r} conflicts with an earlier value of {p!r}")
        _merge(node, {last: _nest(value) if isinstance(value, dict) else value})
    return nested


def _copy(obj: Any) -> Any:
    """A copy of a config's dataclasses and lists; the objects in them (datasets, callables) are shared."""
    if dataclasses.is_dataclass(obj):
        return type(obj)(**{f.name: _copy(getattr(obj, f.name)) for f in dataclasses.fields(obj)})
    return list(obj) if isinstance(obj, list) else obj


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def finish(cfg: Config) -> Config:
    """Fill the defaults that depend on the recipe and the model (the rates left unset) and validate;
    returns cfg. A rate given explicitly is never changed."""
    testbed = cfg.model.name_or_path in TESTBED_MODELS
    opt = cfg.optim
    # the config's own table (rates chosen on its val split) ahead of the built-in one
    rates = {**(RECIPE_LR if testbed else PRETRAINED_LR), **opt.recipe_lr}
    if opt.lr is None and cfg.recipe in rates:
        opt.lr = rates[cfg.recipe]
        if cfg.recipe == "cold-start" and cfg.baseline.cold_start_rl_lr is None:
            cfg.baseline.cold_start_rl_lr = rates["grpo"]  # its two stages: sft's rate, then grpo's
    if opt.lora_lr is None and opt.lr is not None:
        opt.lora_lr = TESTBED_LORA_LR if testbed else float(f"{10 * opt.lr:.6g}")
    if opt.shadow_lr is None and testbed:
        opt.shadow_lr = TESTBED_SHADOW_LR
    if cfg.train.micro_batch_size is None and not testbed:
        cfg.train.micro_batch_size = PRETRAINED_MICRO_BATCH
    if cfg.rollout.max_new_tokens is None:
        cfg.rollout.max_new_tokens = TESTBED_ROLLOUT_TOKENS if testbed else DEFAULT_NEW_TOKENS
    if cfg.eval.max_new_tokens is None and testbed:
        cfg.eval.max_new_tokens = max(TESTBED_EVAL_TOKENS, cfg.rollout.max_new_tokens)
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    """The config as YAML; Python objects (reward callables, in-memory datasets) appear as their names."""
    return yaml.safe_dump(_plain(cfg), sort_keys=False)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, dict) for v in value):  # rows given from Python
            return f"<{len(value)} rows given from Python>"
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '?')}:{value.__qualname__}"
    size = f" of {len(value)} rows" if hasattr(value, "__len__") else ""
    return f"<{type(value).__name__}{size} from Python>"
