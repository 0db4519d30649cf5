"""The typed config: YAML + dotted overrides, each bad input one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridgerl.config import PRETRAINED_LR, RECIPE_LR, RECIPES, Config, ConfigError
from bridgerl.config_load import dump_yaml, load_config


def test_defaults_are_the_embedded_bridge_run():
    cfg = load_config()
    assert cfg.recipe == "bridge" and cfg.model.name_or_path == "embedded" and cfg.task.name == "arith"


def test_the_testbeds_rollouts_are_cut_short_of_its_evaluation_and_other_models_keep_one_budget(tmp_path):
    cfg = load_config()  # v3: rollouts 24 tokens, evaluation 48
    assert (cfg.rollout.max_new_tokens, cfg.eval.max_new_tokens) == (24, 48)
    assert load_config(None, ["rollout.max_new_tokens=64"]).eval.max_new_tokens == 64  # never below the rollouts
    assert load_config(None, ["eval.max_new_tokens=30"]).eval.max_new_tokens == 30  # a value given is kept
    other = load_config(None, ["model.name_or_path=" + str(tmp_path)])
    assert (other.rollout.max_new_tokens, other.eval.max_new_tokens) == (48, None)  # None: the rollouts' budget
    configs = Path(__file__).resolve().parents[1] / "configs"
    for preset in ("testbed-v1.yaml", "testbed-v2.yaml"):  # the earlier testbeds: 48 tokens for both
        cfg = load_config(configs / preset)
        assert (cfg.rollout.max_new_tokens, cfg.eval.max_new_tokens) == (48, 48), preset


def test_overrides_are_typed_and_nested():
    cfg = load_config(None, ["train.steps=7", "optim.lr=3e-4", "bridge.lam=0.7", "task.arith.train_operands=[3,4]",
                             "optim.shadow_lr=2e-4", "log.progress=false"])
    assert cfg.train.steps == 7 and cfg.optim.lr == 3e-4 and cfg.bridge.lam == 0.7
    assert cfg.task.arith.train_operands == [3, 4] and cfg.optim.shadow_lr == 2e-4 and cfg.log.progress is False


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_testbeds_rates_and_whole_batch_passes_never_reach_another_model(recipe):
    toy = load_config(None, [f"recipe={recipe}"])
    assert (toy.optim.lr, toy.optim.lora_lr, toy.optim.shadow_lr) == (RECIPE_LR[recipe], 3e-4, 1e-4)
    real = load_config(None, [f"recipe={recipe}", "model.name_or_path=smollm2"])
    assert real.optim.lr == PRETRAINED_LR[recipe] <= 2e-5
    assert real.optim.lora_lr == pytest.approx(10 * real.optim.lr) and real.optim.shadow_lr is None  # None = lr
    assert toy.train.micro_batch_size is None and real.train.micro_batch_size == 8  # None = the whole batch
    if recipe == "cold-start":
        assert (toy.baseline.cold_start_rl_lr, real.baseline.cold_start_rl_lr) == (RECIPE_LR["grpo"], 1e-6)
    # a rate given explicitly is kept, on any model
    mine = load_config(None, [f"recipe={recipe}", "model.name_or_path=smollm2", "optim.lr=3e-6", "optim.lora_lr=1e-5",
                              "optim.shadow_lr=2e-6"])
    assert (mine.optim.lr, mine.optim.lora_lr, mine.optim.shadow_lr) == (3e-6, 1e-5, 2e-6)


def test_yaml_then_overrides_take_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("recipe: grpo\ntrain:\n  steps: 5\n")
    cfg = load_config(path, ["train.steps=9"])
    assert cfg.recipe == "grpo" and cfg.train.steps == 9


@pytest.mark.parametrize("override, message", [
    (["trian.steps=3"], "unknown config key 'trian'"),
    (["train.stepz=3"], "unknown config key 'train.stepz'; valid keys under train: steps"),
    (["train.steps=abc"], "train.steps: expected int"),
    (["recipe=ppo"], "recipe='ppo' is not allowed; choose one of: sft, grpo"),
    (["bridge.lam=1.5"], "bridge.lam must be in (0, 1]"),
    (["rollout.num_generations=1"], "rollout.num_generations must be >= 2"),
    (["train"], "is not key=value"),
])
def test_bad_input_is_one_clear_error(override, message):
    with pytest.raises(ConfigError) as exc:
        load_config(None, override)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_missing_and_malformed_files_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(bad)


def test_theta_rate_is_the_recipes_testbed_rate_unless_set(tmp_path):
    from bridgerl.config import RECIPE_LR, RECIPES

    assert set(RECIPE_LR) == set(RECIPES)
    for recipe in RECIPES:
        assert load_config(None, [f"recipe={recipe}"]).optim.lr == RECIPE_LR[recipe]
        assert load_config(None, [f"recipe={recipe}", "optim.lr=2e-4"]).optim.lr == 2e-4
    path = tmp_path / "lr.yaml"
    path.write_text("recipe: grpo\noptim:\n  lr: 7.0e-5\n")
    assert load_config(path).optim.lr == 7e-5
    assert load_config(path, ["optim.lr=null"]).optim.lr == RECIPE_LR["grpo"]


def test_dumped_config_loads_back_to_the_same_values(tmp_path):
    cfg = load_config(None, ["recipe=chord", "optim.lr=2e-4"])
    path = tmp_path / "round.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_config(path) == cfg


def test_every_shipped_config_file_loads():
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))
    files = [f for f in files if "accelerate" not in f.parts]
    assert files, "configs/ is empty"
    for f in files:
        assert isinstance(load_config(f), Config), f


def test_own_shadow_rollouts_with_vllm_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="shadow_rollouts=shared"):
        load_config(None, ["recipe=bridge", "rollout.engine=vllm", "bridge.shadow_rollouts=own"])
    assert load_config(None, ["recipe=bridge", "rollout.engine=vllm", "bridge.shadow_rollouts=shared"])


def test_a_configs_recipe_rates_fill_an_unset_lr_ahead_of_the_built_in_tables(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name_or_path: smollm2\noptim:\n  recipe_lr: {sft: 3.0e-5, grpo: 1e-5}\n")
    assert load_config(str(path), ["recipe=grpo"]).optim.lr == 1e-5
    assert load_config(str(path), ["recipe=sft"]).optim.lr == 3e-5
    assert load_config(str(path), ["recipe=mix"]).optim.lr == 1e-6  # not in the table: the built-in default
    assert load_config(str(path), ["recipe=grpo", "optim.lr=2e-6"]).optim.lr == 2e-6  # explicit wins
    assert load_config(str(path), ["recipe=cold-start"]).baseline.cold_start_rl_lr == 1e-5  # its RL stage: grpo's
    assert load_config(None, ["recipe=grpo", "optim.recipe_lr.grpo=3e-4"]).optim.lr == 3e-4  # a dotted override


@pytest.mark.parametrize("value, message", [
    ("optim.recipe_lr.ppo=1e-5", "optim.recipe_lr names no recipe ['ppo']; its keys are recipes: sft, grpo"),
    ("optim.recipe_lr.grpo=-1", "optim.recipe_lr: every rate must be > 0"),
    ("optim.recipe_lr=3", "optim.recipe_lr: expected a mapping, got 3"),
    ("optim.recipe_lr.grpo=fast", "optim.recipe_lr.grpo: expected float, got 'fast'"),
])
def test_a_bad_recipe_rate_table_is_refused_in_one_line(value, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [value])
    assert message in str(err.value) and "\n" not in str(err.value)
