"""README.md says what the code does: each command in it parses, each printed shape is true."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from scripts.cross_validate import parse_arguments as parse_cross_validation
from scripts.make_synthetic import SyntheticConfig
from scripts.prepare import PrepareConfig
from scripts.report import build_report_parser
from scripts.runs import build_runs_parser
from scripts.self_train import parse_arguments as parse_self_training
from scripts.train_sweeps import build_sweep_parser
from src.cli import build_parser
from src.evaluation.config import CompareConfig, EvalConfig, ImportanceConfig
from src.submission.config import SubmitConfig
from src.training.config import ESDConfig

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PARSERS = {
    "scripts.train": lambda: build_parser(ESDConfig),
    "scripts.evaluate": lambda: build_parser(EvalConfig),
    "scripts.prepare": lambda: build_parser(PrepareConfig),
    "scripts.make_synthetic": lambda: build_parser(SyntheticConfig),
    "scripts.train_sweeps": build_sweep_parser,
    "scripts.cross_validate": parse_cross_validation,  # by its own function (two configs)
    "scripts.self_train": parse_self_training,
    "scripts.submit": lambda: build_parser(SubmitConfig),
    "scripts.runs": build_runs_parser,
    "scripts.compare": lambda: build_parser(CompareConfig),
    "scripts.importance": lambda: build_parser(ImportanceConfig),
    "scripts.report": build_report_parser,
}


def readme_commands() -> list[str]:
    """Every command line of the README's bash blocks (continuations joined, comments cut)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split("#", 1)[0].strip()
            if command:
                commands.append(command)
    return commands


@pytest.mark.parametrize("command", readme_commands())
def test_every_readme_command_is_valid(command):
    words = shlex.split(command)
    if words[0] == "make":
        assert re.search(rf"^{words[1]}:", (ROOT / "Makefile").read_text(), flags=re.M)
        return
    assert words[:2] == ["python", "-m"] and words[2] in PARSERS, command
    if PARSERS[words[2]] in (parse_cross_validation, parse_self_training):
        PARSERS[words[2]](words[3:])
        return
    parser = PARSERS[words[2]]()
    try:
        parser.parse_args(words[3:])  # flags exist, values have the right types and choices
    except SystemExit as exited:  # --help
        assert exited.code == 0, command


def test_every_script_has_a_readme_command():
    shown = {shlex.split(c)[2] for c in readme_commands() if c.startswith("python -m")}
    scripts = {f"scripts.{p.stem}" for p in (ROOT / "scripts").glob("*.py") if p.stem != "__init__"}
    assert shown == set(PARSERS) == scripts


def test_the_python_example_prints_the_shapes_it_says(synthetic_raw, tmp_path, monkeypatch):
    example = re.search(r"```python\n(.*?)```", README, flags=re.DOTALL)[1]
    *body, last = example.strip().splitlines()
    expression, comment = last.split("#", 1)
    said = [tuple(map(int, s.split(","))) for s in re.findall(r"\(([\d, ]+)\)", comment)]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "raw").symlink_to(synthetic_raw)
    namespace: dict = {}
    exec("\n".join(body), namespace)  # the README's own code, on synthetic tiles
    x_shape, y_shape = eval(expression, namespace)
    cell_px = namespace["data"].manifest.cell_px  # 4 px on the test tiles, 50 on real ones
    assert tuple(x_shape)[:2] == said[0][:2] and tuple(y_shape) == said[1]
    assert said[0][2:] == (4 * 50, 4 * 50) and tuple(x_shape)[2:] == (4 * cell_px, 4 * cell_px)
