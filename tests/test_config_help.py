"""``poolft train --help`` / ``--help-key`` / ``--help-section``: every config key documented from its
dataclass field, so a key added without a help line fails here, and the listing cannot drift from
the fields' types and defaults.

The expectations are read straight from ``dataclasses.fields`` (the annotation as written, the
default or ``default_factory()``, ``metadata["help"]``), not from the formatting code under test.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

import poolft.config
from poolft.cli import EXIT_USER_ERROR, main
from poolft.config import CHOICES, SECTIONS, parse_value


def section_fields() -> list[tuple[str, dataclasses.Field]]:
    return [(section, item) for section, cls in SECTIONS.items() for item in dataclasses.fields(cls)]


def default_of(item: dataclasses.Field):
    return item.default_factory() if item.default is dataclasses.MISSING else item.default


def run_cli(capsys, *arguments: str) -> tuple[int, str, str]:
    """``main(["train", *arguments])`` -> (exit status, stdout, stderr); argparse's --help exits."""
    try:
        status = main(["train", *arguments])
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def train_help(name: str) -> str:
    (item,) = [item for item in dataclasses.fields(poolft.config.TrainConfig) if item.name == name]
    return " ".join(item.metadata["help"].split())


def entry(output: str, section: str, name: str) -> tuple[str, str]:
    """The header line of ``--section.name`` in ``output`` and its help, joined into one line."""
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(f"  --{section}.{name}  ")]
    assert len(starts) == 1, f"--{section}.{name} appears {len(starts)} times in the help"
    body = []
    for line in lines[starts[0] + 1 :]:
        if not line.startswith("      "):
            break
        body.append(line.strip())
    return lines[starts[0]], " ".join(body)


@pytest.mark.parametrize("section", list(SECTIONS))
def test_every_config_key_has_a_one_line_help(section):
    missing = [item.name for item in dataclasses.fields(SECTIONS[section]) if not item.metadata.get("help", "").strip()]
    assert not missing, (
        f"{section} keys without help: {missing}; declare them as "
        'field(default=..., metadata={"help": "..."}) (poolft train --help prints it)'
    )
    multi = [item.name for item in dataclasses.fields(SECTIONS[section]) if "\n" in item.metadata["help"]]
    assert not multi, f"{section} keys whose help is not one line: {multi}"


def test_train_help_lists_every_key_with_its_type_default_and_help(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    status, output, _ = run_cli(capsys, "--help")
    assert status == 0
    for section, item in section_fields():
        header, help_text = entry(output, section, item.name)
        # the annotation as the source writes it (config.py has `from __future__ import annotations`)
        assert isinstance(item.type, str)
        expected_type = item.type
        if (section, item.name) in CHOICES:
            expected_type += f" ({'|'.join(CHOICES[section, item.name])})"
        assert f"  {expected_type}  " in header, header
        shown = re.search(r"\(default: (.*)\)$", header)
        assert shown, header
        # the default as shown, typed back on the command line, is the field's default
        assert parse_value(shown[1]) == default_of(item), header
        assert help_text.split() == item.metadata["help"].split(), f"{section}.{item.name}"
    assert all(f"{section} keys: " in output for section in SECTIONS)
    too_wide = [line for line in output.splitlines() if len(line) > 100 and "(default: " not in line]
    assert not too_wide, too_wide


def test_help_key_prints_that_key_alone(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    status, output, error = run_cli(capsys, "--help-key", "train.seed")
    assert (status, error) == (0, "")
    header, help_text = entry(output, "train", "seed")
    assert header == "  --train.seed  int  (default: 0)"
    assert help_text.startswith(train_help("seed"))
    assert "--seed VALUE" in help_text  # the bare form works: seed is a train key only
    assert output.count("  --") == 1
    assert run_cli(capsys, "--help-key", "seed")[1] == output
    assert run_cli(capsys, "--help_key=--train.seed")[1] == output


def test_help_key_and_help_section_are_not_read_as_config_overrides(capsys, monkeypatch):
    def no_run(*_):
        raise AssertionError("a help request must not load a config or train")

    monkeypatch.setattr(poolft.config, "load_config", no_run)
    status, output, _ = run_cli(capsys, "--help-key", "learning_rate", "--train.seed", "3")
    assert status == 0 and "--train.learning_rate  float  (default: 5e-05)" in output
    status, output, _ = run_cli(capsys, "--help-section", "data")
    assert status == 0 and "data keys: " in output
    assert "  --data.max_length  " in output and "  --train." not in output and "  --model." not in output


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--help-key", "train.sed"], "unknown config key train.sed (did you mean 'seed'?)"),
        (["--help-key", "lerning_rate"], "unknown config key 'lerning_rate' (did you mean 'learning_rate'?)"),
        (["--help-key", "trian.seed"], "unknown config section 'trian'"),
        (["--help-key"], "expected one argument"),
        (["--help-section", "modle"], "invalid choice: 'modle'"),
    ],
)
def test_a_bad_help_request_is_one_line_and_exit_2(capsys, arguments, message):
    status, output, error = run_cli(capsys, *arguments)
    assert status == EXIT_USER_ERROR
    assert output == ""
    assert len(error.splitlines()) == 1 and error.startswith("poolft: error: "), error
    assert message in error


def test_top_level_help_and_a_bare_backbone_folder(capsys, tiny_bert_dir, quiet_libraries):
    from poolft.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "eval", "predict", "explain", "export", "compare", "sweep", "report"):
        assert command in out
    # a backbone folder (BertModel) is not a classifier: predict would use a random head
    assert main(["predict", "--model", str(tiny_bert_dir), "good film"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds a bare backbone (BertModel)" in err, err
