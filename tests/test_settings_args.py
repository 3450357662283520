"""common/settings_args.py: the one NAME.KEY=VALUE parser of the command lines."""

from __future__ import annotations

import argparse

import pytest

from common.settings_args import by_name, key_setting, named_setting


@pytest.mark.parametrize("text, value", [
    ("cross.batch_size=64", 64), ("rewrite.original_weight=0.25", 0.25), ("uddh.standardize=false", False),
    ("uddh.sigma=null", None), ("lsh.layers=[1, 2]", [1, 2]), ('rewrite.llm="a=b"', "a=b"),
    ("rewrite.adapter=rewriter-lora", "rewriter-lora"), ("cross.model_id=runs/cross", "runs/cross"),
    ("rewrite.cache_file=a=b.json", "a=b.json"),  # only the first '=' separates
])
def test_values_are_json_when_they_are_json_else_the_string(text, value):
    name, key, got = named_setting(text)
    assert (name, key) == tuple(text.split("=")[0].split(".")) and got == value and type(got) is type(value)


@pytest.mark.parametrize("text", ["cross", "cross=1", ".k=1", "cross.=1", "cross.k=", "=1"])
def test_malformed_settings_are_usage_errors_naming_the_form(text):
    with pytest.raises(argparse.ArgumentTypeError, match=r"expected NAME\.KEY=VALUE, got"):
        named_setting(text)


def test_settings_group_by_name_and_the_last_repeat_wins():
    parser = argparse.ArgumentParser()
    parser.add_argument("--arg", action="append", default=[], type=named_setting)
    args = parser.parse_args(["--arg", "a.x=1", "--arg", "b.y=two", "--arg", "a.x=3"])
    assert by_name(args.arg) == {"a": {"x": 3}, "b": {"y": "two"}}
    assert key_setting("epochs=40") == ("epochs", 40)
    with pytest.raises(argparse.ArgumentTypeError, match="expected KEY=VALUE"):
        key_setting("epochs")
