"""`key=value` overrides are accepted anywhere among a command's options."""

from __future__ import annotations

import json

import pytest

from dfgan.cli import main, parse_args


def test_overrides_between_flags_are_kept_in_order():
    args = parse_args(["train", "--variant", "full", "data.root=x", "--quiet", "train.steps=3", "--no-track",
                       "model.nf=8"])
    assert args.overrides == ["data.root=x", "train.steps=3", "model.nf=8"]
    assert args.quiet and args.no_track and args.variant == "full"


def test_overrides_anywhere_reach_the_spec(capsys):
    assert main(["params", "model.nf=8", "--variant", "full", "--json", "data.imsize=32"]) == 0
    assert json.loads(capsys.readouterr().out)["config"] == {"variant": "full", "nf": 8, "imsize": 32,
                                                             "vocab_size": 5450}


def test_unknown_arguments_are_still_errors(capsys):
    with pytest.raises(SystemExit):
        parse_args(["train", "--variant", "full", "--bogus", "x=1"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a command without overrides does not take them
        parse_args(["data", "check", "--data", "folder", "--root", "r", "model.nf=4"])
    assert "unrecognized arguments: model.nf=4" in capsys.readouterr().err
