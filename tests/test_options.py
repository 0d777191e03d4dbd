"""NAME=PATH options of the report (--model, --train_log): one parser, named errors."""

from pathlib import Path

import pytest

from espnet_prune.recipe import report, trainlog
from espnet_prune.recipe.options import parse_named_paths


def test_named_paths_keep_order_and_strip_names():
    got = parse_named_paths([" a =x/y", "b=z=w"], "--opt")
    assert got == [("a", Path("x/y")), ("b", Path("z=w"))]  # the path may hold "="


@pytest.mark.parametrize("spec, message", [
    ("a", "--opt 'a': expected NAME=DIR"), ("=x", "expected NAME=DIR"),
    ("a=", "expected NAME=DIR"), (" =x", "expected NAME=DIR")])
def test_malformed_values_are_named(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_named_paths([spec], "--opt", "DIR")


def test_a_name_given_twice_is_refused():
    with pytest.raises(ValueError, match="--opt 'a=y': name 'a' given twice"):
        parse_named_paths(["a=x", "a=y"], "--opt")


def test_report_and_trainlog_check_what_their_paths_must_be(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("")
    assert trainlog.parse_named_logs([f"p={log}"]) == [("p", log)]
    with pytest.raises(FileNotFoundError, match="--train_log q: training log not found"):
        trainlog.parse_named_logs([f"p={log}", f"q={tmp_path / 'none.log'}"])
    with pytest.raises(report.ReportError, match="--model 'm': expected NAME=DIR"):
        report.parse_models(["m"])
    with pytest.raises(report.ReportError, match="--model m: model directory not found"):
        report.parse_models([f"m={tmp_path / 'nope'}"])
    with pytest.raises(report.ReportError, match="config.yaml not found"):
        report.parse_models([f"m={tmp_path}"])
    with pytest.raises(report.ReportError, match="at least one --model"):
        report.parse_models([])
