"""The lean shadow (bridge.lean_shadow): thetahat's AdamW moments in a file and both weight copies in file
mappings paged out in turn; the same update bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch

from bridgerl.config import ConfigError
from bridgerl.config_load import load_config
from bridgerl.trainers.offload import FileAdamW, FileBacked
from bridgerl.trainers.recipes import bridge_step
from bridgerl.trainers.state import build_state
from bridgerl.utils.memory import held_mb, proc_status_mb

from conftest import FixedEngine, ListTask, exact_config, tiny_llama

ADAMW = ("optim.optimizer=adamw", "optim.weight_decay=0.01", "optim.max_grad_norm=1.0", "optim.lr=1e-2",
         "optim.lora_lr=3e-2", "optim.shadow_lr=2e-2")


def _params(seed: int, dtype=torch.float32) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=g, dtype=dtype)) for shape in ((5, 7), (3,), (1000, 3))]


def _set_grads(params, step: int) -> None:
    g = torch.Generator().manual_seed(100 + step)
    for i, p in enumerate(params):  # the middle parameter gets no gradient at step 1: AdamW skips it
        p.grad = None if (i == 1 and step == 1) else torch.randn(p.shape, generator=g, dtype=p.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_file_adamw_steps_exactly_as_torch_adamw(dtype):
    a, b = _params(0, dtype), _params(0, dtype)
    ref = torch.optim.AdamW(a, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    lean = FileAdamW(b, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    for step in range(4):
        _set_grads(a, step)
        _set_grads(b, step)
        ref.step()
        lean.step()
        for x, y in zip(a, b):
            assert torch.equal(x, y)
    assert all(set(s) == {"step"} for s in lean.state.values())  # no moment stays in memory
    theirs, ours = ref.state_dict(), lean.state_dict()
    assert theirs["param_groups"] == ours["param_groups"]
    for i, s in theirs["state"].items():
        assert set(ours["state"][i]) == set(s) and all(torch.equal(s[k], ours["state"][i][k]) for k in s)
    assert held_mb([], [lean]) < held_mb([], [ref]) / 100


def test_a_checkpoint_moves_between_file_adamw_and_torch_adamw_and_the_run_goes_on_alike():
    a, b = _params(1), _params(1)
    ref = torch.optim.AdamW(a, lr=1e-2)
    for step in range(2):
        _set_grads(a, step)
        ref.step()
    with torch.no_grad():
        for x, y in zip(a, b):
            y.copy_(x)
    lean = FileAdamW(b, lr=1e-2)
    lean.load_state_dict(copy.deepcopy(ref.state_dict()))  # torch's checkpoint (a copy, as a saved file is) into ours
    for step in range(2, 4):
        _set_grads(a, step)
        _set_grads(b, step)
        ref.step()
        lean.step()
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    back = torch.optim.AdamW(a, lr=1e-2)
    back.load_state_dict(copy.deepcopy(lean.state_dict()))  # and ours back into torch's
    assert all(torch.equal(back.state[p]["exp_avg_sq"], ref.state[p]["exp_avg_sq"]) for p in a)


def _state(tokenizer, *overrides):
    model = tiny_llama(tokenizer, seed=0, dtype=torch.float32)
    return build_state(exact_config("recipe=bridge", *ADAMW, *overrides), ListTask(), model, tokenizer,
                       FixedEngine(tokenizer))


@pytest.mark.parametrize("rollouts", ["own", "shared"])
def test_bridge_with_the_lean_shadow_moves_theta_thetahat_and_w_exactly_as_without(tokenizer, rollouts):
    plain = _state(tokenizer, f"bridge.shadow_rollouts={rollouts}")
    lean = _state(tokenizer, f"bridge.shadow_rollouts={rollouts}", "bridge.lean_shadow=true")
    assert isinstance(lean.optimizers["shadow"], FileAdamW) and not isinstance(plain.optimizers["shadow"], FileAdamW)
    assert set(lean.paged) == ({"theta", "shadow"} if rollouts == "own" else set()) and not plain.paged
    start = {n: p.detach().clone() for n, p in plain.shadow.items()}
    for step in range(3):
        for st in (plain, lean):
            torch.manual_seed(step)
            bridge_step(st)
            st.step += 1
    for group in ("theta", "lora", "shadow"):
        pairs = list(zip(plain.group_params(group), lean.group_params(group)))
        assert pairs and all(torch.equal(x, y) for x, y in pairs), group
    assert max((plain.shadow[n] - start[n]).abs().max().item() for n in start) > 1e-3  # thetahat did move


def _rss_mb() -> float:
    rss = proc_status_mb("VmRSS")
    assert rss is not None, "no VmRSS"
    return rss


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="reads Linux's /proc")
def test_file_backed_weights_leave_resident_memory_when_paged_out_and_keep_their_values():
    weight = torch.nn.Parameter(torch.randn(64, 2**18))  # 64 MiB
    value = weight.detach().clone()
    pages = FileBacked([weight])
    weight.data.add_(1.0)  # every page touched (resident), through the parameter
    before = _rss_mb()
    pages.page_out()
    assert before - _rss_mb() > 48
    assert torch.equal(weight.detach(), value + 1.0)  # faulted back from the file, updates kept
    assert isinstance(weight, torch.nn.Parameter) and weight.requires_grad


def test_the_lean_shadow_is_refused_with_sharding_in_one_line():
    with pytest.raises(ConfigError, match="bridge.lean_shadow=true keeps whole moments in a file"):
        load_config(None, ["bridge.lean_shadow=true", "train.sharding=fsdp"])


@pytest.mark.filterwarnings(r"ignore:Seems like `optimizer.step\(\)` has been overridden")
def test_own_rollouts_step_thetahat_before_thetas_gradients_exist(tokenizer):
    """Pass 2 runs first with own rollouts: thetahat's optimizer steps while theta has no gradient yet,
    so the two full-size gradients are never held at once."""
    st = _state(tokenizer, "bridge.shadow_rollouts=own")
    seen = []
    shadow_opt = st.optimizers["shadow"]
    original = shadow_opt.step

    def spy(*args, **kwargs):
        seen.append(sum(p.grad is not None for p in st.theta.values()))
        return original(*args, **kwargs)

    shadow_opt.step = spy
    bridge_step(copy.copy(st))
    assert seen == [0]
