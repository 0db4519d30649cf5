"""Everything a step reads or updates: model, parameter groups, optimizers, data positions."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from bridgerl.config import LEAN_SHADOW_FSDP, Config, ConfigError
from bridgerl.models.lora import attach_lora, split_params
from bridgerl.tasks.base import RL_TRAIN, SFT_TRAIN, Example, Task, TaskError
from bridgerl.trainers.offload import FileAdamW, FileBacked, file_directory
from bridgerl.utils.distributed import Dist
from bridgerl.utils.sharding import copy_with_shared, shard_module, wants_fsdp
from bridgerl.utils.timers import PhaseTimer

# What each recipe needs beyond the base weights theta.
USES_LORA = {"bridge"}
USES_RL = {"grpo", "cold-start", "bridge", "alternate", "mix", "luffy", "chord"}
USES_SFT = {"sft", "cold-start", "bridge", "alternate", "mix", "chord"}
NEEDS_RL_SOLUTIONS = {"luffy"}  # the expert trace is injected into the prompt's own group


class Sampler:
    """Seeded epoch shuffles of range(n); (epoch, pos) is saved for exact resume."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(self.n))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffle()
            out.append(self._order[self.pos])
            self.pos += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._shuffle()


@dataclass
class TrainState:
    cfg: Config
    task: Task
    model: nn.Module
    tokenizer: Any
    engine: Any
    theta: dict[str, nn.Parameter]  # full base weights (every trainable non-LoRA parameter)
    lora: dict[str, nn.Parameter]  # the adapter w (empty when the recipe has none)
    shadow: dict[str, nn.Parameter] | None  # thetahat: RL-only copy of theta (bridge)
    ref: dict[str, torch.Tensor] | None  # the starting weights, for the KL penalty
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]
    rl_examples: list[Example]
    sft_examples: list[Example]
    rl_sampler: Sampler | None
    sft_sampler: Sampler | None
    dist: Dist = field(default_factory=Dist)
    timer: PhaseTimer = field(default_factory=PhaseTimer)
    step: int = 0
    # Sharded runs (utils/sharding.py): thetahat and the reference are modules of their own,
    # whose parameters are the `shadow` / `ref` dicts above.
    views: dict[str, nn.Module] = field(default_factory=dict)
    sharded: bool = False
    # bridge.lean_shadow on the CPU: "theta" and "shadow" weights in file mappings (trainers/offload.py)
    paged: dict[str, FileBacked] = field(default_factory=dict)

    def page_out(self, group: str) -> None:
        """Take a file-backed group's weights out of resident memory until next used (else nothing)."""
        if group in self.paged:
            self.paged[group].page_out()

    def forward_module(self, params: dict[str, torch.Tensor] | None) -> nn.Module:
        """The module that computes pi with `params` (None: theta + w; the shadow or ref dicts)."""
        if params is None:
            return self.model
        if params is self.shadow and "shadow" in self.views:
            return self.views["shadow"]
        if params is self.ref and "ref" in self.views:
            return self.views["ref"]
        return _Bound(self.model, params)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def group_params(self, group: str) -> list[nn.Parameter]:
        return list({"theta": self.theta, "lora": self.lora, "shadow": self.shadow or {}}[group].values())


class _Bound(nn.Module):
    """The model called with some parameters replaced (thetahat, or the reference weights)."""

    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.inner, self.params = model, params

    def forward(self, **kwargs):
        return functional_call(self.inner, self.params, args=(), kwargs=kwargs)


def _schedule(cfg: Config, total: int):
    warm, kind = cfg.optim.warmup_steps, cfg.optim.scheduler

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if kind == "cosine" and total > warm:
            progress = min(1.0, (step - warm) / max(1, total - warm))
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return factor


def _optimizer(params: list[nn.Parameter], lr: float, cfg: Config) -> torch.optim.Optimizer:
    if cfg.optim.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=cfg.optim.weight_decay)
    return torch.optim.AdamW(params, lr=lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                             weight_decay=cfg.optim.weight_decay)


def check_data(cfg: Config, task: Task) -> None:
    """Fail before any output is written when the task lacks what the recipe needs, naming where the
    split comes from (the task's data_hint: file, column, first row lacking a solution)."""
    def hint(split: str) -> str:
        where = task.data_hint(split)
        return f" ({where})" if where else ""

    if cfg.recipe in USES_RL and not task.split(RL_TRAIN):
        raise TaskError(f"recipe={cfg.recipe} needs RL prompts but task {task.name!r} has an empty rl_train "
                        f"split{hint(RL_TRAIN)}")
    if cfg.recipe in USES_SFT and not task.split(SFT_TRAIN):
        raise TaskError(f"recipe={cfg.recipe} needs expert solutions but task {task.name!r} has an empty "
                        f"sft_train split{hint(SFT_TRAIN)}")
    if cfg.recipe in NEEDS_RL_SOLUTIONS and any(e.solution is None for e in task.split(RL_TRAIN)):
        raise TaskError(f"recipe={cfg.recipe} injects an expert solution per RL prompt, but some rl_train "
                        f"examples of task {task.name!r} have none{hint(RL_TRAIN)}; use a task whose RL "
                        f"problems carry solutions")


def build_state(cfg: Config, task: Task, model: nn.Module, tokenizer: Any, engine: Any,
                dist: Dist | None = None) -> TrainState:
    check_data(cfg, task)
    task.check_tokenizer(tokenizer)  # e.g. chat-message prompts need a chat template: refuse before any output
    dist = dist or Dist(device=next(model.parameters()).device)
    if cfg.rollout.prompts_per_step % dist.world or cfg.train.sft_batch_size % dist.world:
        raise ValueError(f"rollout.prompts_per_step ({cfg.rollout.prompts_per_step}) and train.sft_batch_size "
                         f"({cfg.train.sft_batch_size}) must be divisible by the number of processes ({dist.world})")
    if cfg.recipe in USES_LORA:
        attach_lora(model, cfg.lora.targets, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.merged)
    model.train()
    dist.broadcast_([*model.parameters(), *model.buffers()])  # one model on every rank, w's random A included
    theta, lora = split_params(model)
    wants_shadow = cfg.recipe == "bridge" and cfg.bridge.meta
    views: dict[str, nn.Module] = {}
    sharded = wants_fsdp(cfg.train.sharding, dist.world)
    if sharded:
        if wants_shadow and cfg.bridge.lean_shadow:
            raise ConfigError(LEAN_SHADOW_FSDP)
        shadow, ref, views = _shard(cfg, model, lora, wants_shadow)
        theta, lora = split_params(model)  # sharding replaced the parameter objects
    else:
        shadow = None
        if wants_shadow:
            # Decision 3 (method.md): thetahat is initialised from theta once, then trained by RL only.
            shadow = {n: nn.Parameter(p.detach().clone()) for n, p in theta.items()}
        ref = None
        if cfg.loss.kl_coef > 0:
            ref = {n: p.detach().clone() for n, p in theta.items()}
            ref.update({n: torch.zeros_like(p) for n, p in lora.items() if ".lora_B." in n})  # w = 0 at start

    paged = {}
    if (shadow is not None and not sharded and cfg.bridge.lean_shadow and cfg.bridge.shadow_rollouts == "own"
            and dist.device.type == "cpu"):  # each copy resident only while it is used (trainers/offload.py)
        paged = {g: FileBacked(list(params.values()), file_directory()) for g, params in (("theta", theta),
                                                                                          ("shadow", shadow))}
    optimizers = {"theta": _optimizer(list(theta.values()), cfg.optim.lr, cfg)}
    if lora:
        optimizers["lora"] = _optimizer(list(lora.values()), cfg.optim.lora_lr, cfg)
    if shadow is not None:
        shadow_lr = cfg.optim.shadow_lr if cfg.optim.shadow_lr is not None else cfg.optim.lr
        if cfg.bridge.lean_shadow and cfg.optim.optimizer == "adamw":  # moments in a file (trainers/offload.py)
            optimizers["shadow"] = FileAdamW(list(shadow.values()), lr=shadow_lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                                             weight_decay=cfg.optim.weight_decay, directory=file_directory())
        else:
            optimizers["shadow"] = _optimizer(list(shadow.values()), shadow_lr, cfg)
    factor = _schedule(cfg, cfg.train.steps)
    schedulers = {k: torch.optim.lr_scheduler.LambdaLR(o, factor) for k, o in optimizers.items()}

    rl, sft = task.split(RL_TRAIN), task.split(SFT_TRAIN)
    seed = cfg.run.seed
    st = TrainState(
        cfg=cfg, task=task, model=model, tokenizer=tokenizer, engine=engine,
        theta=theta, lora=lora, shadow=shadow, ref=ref, optimizers=optimizers, schedulers=schedulers,
        rl_examples=rl, sft_examples=sft,
        rl_sampler=Sampler(len(rl), seed) if rl else None,
        sft_sampler=Sampler(len(sft), seed + 1) if sft else None,
        dist=dist, views=views, sharded=sharded, paged=paged,
    )
    if sharded and hasattr(engine, "synced"):
        engine.synced = True
    return st


def _shard(cfg: Config, model: nn.Module, lora: dict[str, nn.Parameter], wants_shadow: bool
           ) -> tuple[dict[str, nn.Parameter] | None, dict[str, nn.Parameter] | None, dict[str, nn.Module]]:
    """FSDP2 layout: thetahat and the reference become modules (copies made before sharding),
    w stays unsharded and shared by the model and the shadow module (utils/sharding.py)."""
    if cfg.rollout.engine != "hf":
        raise ConfigError("train.sharding=fsdp supports rollout.engine=hf only (the vLLM weight push needs "
                          "whole weights); use rollout.engine=hf, or train.sharding=none with vLLM")
    views: dict[str, nn.Module] = {}
    if wants_shadow:
        views["shadow"] = copy_with_shared(model, lora, trainable=True)
    if cfg.loss.kl_coef > 0:
        ref_module = copy_with_shared(model, {}, trainable=False)
        with torch.no_grad():  # the reference is the starting model: w = 0
            for n, p in ref_module.named_parameters():
                if ".lora_B." in n:
                    p.zero_()
        views["ref"] = ref_module
    ignored = set(lora.values())
    for module in (model, *views.values()):
        shard_module(module, ignored)
    shadow = ref = None
    if "shadow" in views:
        shadow = {n: p for n, p in views["shadow"].named_parameters() if n not in lora}
    if "ref" in views:
        ref = dict(views["ref"].named_parameters())
    return shadow, ref, views
