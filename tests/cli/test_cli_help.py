"""`bridgerl X --help` documents every option with its default; `train --help` names the recipes and
where every config key is documented."""

from __future__ import annotations

import argparse

from bridgerl.cli import build_parser
from bridgerl.config import RECIPES


def _commands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_option_of_every_command_has_help_and_shows_its_default():
    commands = _commands()
    assert set(commands) == {"train", "eval", "pretrain", "compare", "plot"}
    for name, parser in commands.items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.dest}: no help"
            if action.option_strings:
                assert "default" in formatter._expand_help(action), f"{name} {action.option_strings}: no default shown"


def test_train_help_lists_the_recipes_and_points_at_the_config_reference():
    text = _commands()["train"].format_help()
    for recipe in RECIPES:
        assert recipe in text
    assert "src/bridgerl/config.py" in text and "resume=true" in text and "run.overwrite=true" in text
