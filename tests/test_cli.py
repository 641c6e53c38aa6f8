"""The dataclass-generated command line (src.cli) on the real PrepareConfig."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from scripts.prepare import PrepareConfig
from src.cli import build_parser, parse_config


def test_help_lists_every_field_with_its_help(capsys):
    with pytest.raises(SystemExit) as exited:
        parse_config(PrepareConfig, ["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for field in dataclasses.fields(PrepareConfig):
        assert f"--{field.name}" in text
    assert "fraction of labelled tiles for validation" in text and "--config" in text


def test_defaults_types_and_structured_values():
    config = parse_config(
        PrepareConfig,
        ["--raw_dir", "r", "--val_fraction", "0.3", "--preprocessing", "{s1_blur_sigma: 2}"],
    )
    assert config.raw_dir == Path("r") and config.val_fraction == 0.3
    options = config.request().resolve(None)  # a new folder: the rest are the defaults
    assert options.preprocessing.s1_blur_sigma == 2 and options.preprocessing.s2_gamma == 2.2
    assert (options.val_fraction, options.test_fraction, options.seed) == (0.3, 0.0, 0)
    assert config.processed_dir == Path("data/processed") and config.workers == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--raw_dirr", "x"], "unrecognized arguments: --raw_dirr"),
        (["--workers", "two"], "argument --workers: invalid int value: 'two'"),
        (["--tile_size_gt", "5"], "tile_size_gt=5 must divide"),
        (["--preprocessing", "{nope: 1}"], "preprocessing:"),
    ],
)
def test_bad_flags_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        parse_config(PrepareConfig, argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_yaml_config_is_overridden_by_flags(tmp_path):
    path = tmp_path / "prepare.yaml"
    path.write_text("seed: 7\nval_fraction: 0.5\nworkers: 0\n")
    config = parse_config(PrepareConfig, ["--config", str(path), "--seed", "9"])
    assert (config.seed, config.val_fraction, config.workers) == (9, 0.5, 0)


def test_yaml_config_with_unknown_option_is_rejected(tmp_path, capsys):
    path = tmp_path / "prepare.yaml"
    path.write_text("seed: 7\nsplit_seed: 3\n")
    for config, message in ((path, "unknown option 'split_seed'"),
                            (tmp_path / "absent.yaml", "no such file")):  # fmt: skip
        with pytest.raises(SystemExit) as exit_status:
            parse_config(PrepareConfig, ["--config", str(config)])
        assert exit_status.value.code == 2 and message in capsys.readouterr().err


def test_boolean_fields_get_on_and_off_flags():
    @dataclasses.dataclass
    class Toggle:
        """A config with a switch."""

        fast: bool = dataclasses.field(default=False, metadata={"help": "go fast"})
        name: str | None = dataclasses.field(default="x", metadata={"help": "a name"})

    parser = build_parser(Toggle)
    assert parse_config(Toggle, ["--fast"]).fast is True
    assert parse_config(Toggle, ["--no-fast"]).fast is False
    assert parse_config(Toggle, ["--name", "none"]).name is None
    assert "--no-fast" in parser.format_help()


def test_options_known_wrong_from_the_options_alone_are_refused_when_built():
    from src.training.config import ESDConfig

    with pytest.raises(ValueError, match=r"ltae splits --tf_width among its 4 heads: 30"):
        ESDConfig(model_type="TemporalFusion", temporal="ltae", tf_width=30)
    with pytest.raises(ValueError, match=r"'Unet' \(did you mean UNet\?\)"):
        ESDConfig(model_type="Unet")
