"""Run configuration: safe YAML loading, the override syntaxes, type coercion and validation."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

import poolft.config
from poolft.config import (
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    config_to_yaml,
    load_config,
    parse_overrides,
    parse_value,
    resolve_key,
)
from poolft.errors import PoolftError


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


# --- YAML files ---------------------------------------------------------------------------------


def test_no_file_and_no_overrides_gives_the_defaults():
    assert load_config() == RunConfig()
    assert load_config(None, []) == RunConfig(ModelConfig(), DataConfig(), TrainConfig())


def test_yaml_file_sets_values_of_every_section(tmp_path):
    path = write(
        tmp_path / "run.yaml",
        "model:\n  pooler: attention\n  pooler_options: {num_heads: 2}\n  hidden_layers: [-1, -2]\n"
        "data:\n  text_column: text\n  max_length: 64\n  data_files: {train: a.csv, validation: b.csv}\n"
        "train:\n  learning_rate: 0.001\n  seed: 7\n  freeze_backbone: true\n  trackers: [tensorboard]\n",
    )
    config = load_config(path)
    assert config.model.pooler == "attention"
    assert config.model.pooler_options == {"num_heads": 2}
    assert config.model.hidden_layers == [-1, -2]
    assert config.data.text_column == "text" and config.data.max_length == 64
    assert config.data.data_files == {"train": "a.csv", "validation": "b.csv"}
    assert config.train.learning_rate == 0.001 and config.train.seed == 7
    assert config.train.freeze_backbone is True and config.train.trackers == ["tensorboard"]
    assert config.train.batch_size == TrainConfig().batch_size  # untouched keys keep their defaults


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    # YAML 1.1 reads 1e-4 (no dot) as the string "1e-4"; a config file means the number
    path = write(tmp_path / "run.yaml", "train:\n  learning_rate: 1e-4\n  head_learning_rate: 2E-3\n  max_steps: 1e3\n")
    config = load_config(path)
    assert config.train.learning_rate == pytest.approx(1e-4) and isinstance(config.train.learning_rate, float)
    assert config.train.head_learning_rate == pytest.approx(2e-3)
    assert config.train.max_steps == 1000 and isinstance(config.train.max_steps, int)


def test_yaml_no_means_the_string_no_for_mixed_precision(tmp_path):
    # YAML 1.1 reads a bare `no` as False; for a string option the user means "no"
    config = load_config(write(tmp_path / "run.yaml", "train:\n  mixed_precision: no\n"))
    assert config.train.mixed_precision == "no"
    assert load_config(None, ["--train.mixed_precision", "no"]).train.mixed_precision == "no"
    assert load_config(None, ["train.mixed_precision=bf16"]).train.mixed_precision == "bf16"


def test_yaml_python_object_tag_is_refused_not_executed(tmp_path):
    marker = tmp_path / "executed"
    path = write(
        tmp_path / "evil.yaml",
        f'model:\n  pooler: !!python/object/apply:os.system ["touch {marker}"]\n',
    )
    with pytest.raises(PoolftError, match="YAML tag that safe loading refuses") as caught:
        load_config(path)
    assert "python/object/apply:os.system" in str(caught.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("model: [1,\n", "is not valid YAML (line 2"),
        ("model:\n  pooler: mean\n pooler_options: {}\n", "is not valid YAML"),
        ("a: b: c\n", "mapping values are not allowed here"),
    ],
)
def test_malformed_yaml_is_one_line_error_with_the_line(tmp_path, text, expected):
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(PoolftError, match="fix the syntax") as caught:
        load_config(path)
    message = str(caught.value)
    assert expected in message and str(path) in message
    assert "\n" not in message


def test_yaml_that_is_not_a_mapping_is_refused(tmp_path):
    with pytest.raises(PoolftError, match="must hold a mapping with sections model/data/train"):
        load_config(write(tmp_path / "list.yaml", "- model\n- data\n"))
    with pytest.raises(PoolftError, match=r"section 'train' must be a mapping.*write it as train:"):
        load_config(write(tmp_path / "flat.yaml", "train: 3\n"))


def test_missing_folder_and_non_utf8_config_files(tmp_path):
    with pytest.raises(PoolftError, match="does not exist; pass --config"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(PoolftError, match="is a folder"):
        load_config(tmp_path)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("data:\n  text_column: caf\xe9\n".encode("latin-1"))
    with pytest.raises(PoolftError, match="not UTF-8 text; save it as UTF-8"):
        load_config(latin1)


def test_empty_yaml_file_and_empty_section_take_overrides(tmp_path):
    assert load_config(write(tmp_path / "empty.yaml", "")) == RunConfig()
    config = load_config(write(tmp_path / "sections.yaml", "train:\nmodel:\n"), ["--train.seed", "5"])
    assert config.train.seed == 5


def test_overrides_win_over_the_file(tmp_path):
    path = write(tmp_path / "run.yaml", "train:\n  seed: 1\n  epochs: 3\n")
    config = load_config(path, ["--train.seed", "2"])
    assert config.train.seed == 2 and config.train.epochs == 3.0


# --- override syntaxes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments",
    [
        ["--train.seed", "11"],  # --section.key value
        ["--seed", "11"],  # --key value (seed exists in train only)
        ["train.seed=11"],  # section.key=value
        ["seed=11"],
        ["--train.seed=11"],
    ],
)
def test_every_override_syntax_sets_the_key(arguments):
    assert load_config(None, arguments).train.seed == 11


def test_bare_flag_switches_a_boolean_on():
    config = load_config(None, ["--freeze_backbone", "--model.stock_head", "--seed", "3"])
    assert config.train.freeze_backbone is True
    assert config.model.stock_head is True
    assert config.train.seed == 3
    assert load_config(None, ["--train.progress", "false"]).train.progress is False
    assert load_config(None, ["--overwrite_output_dir"]).train.overwrite_output_dir is True  # last argument


def test_dashes_in_keys_are_underscores():
    config = load_config(None, ["--batch-size", "8", "--train.eval-batch-size=4"])
    assert (config.train.batch_size, config.train.eval_batch_size) == (8, 4)


def test_argument_that_is_no_override_is_refused():
    with pytest.raises(PoolftError, match="cannot read argument 'seed'; write overrides as --section.key value"):
        parse_overrides(["seed"])


def test_resolve_key():
    assert resolve_key("train.learning_rate") == ("train", "learning_rate")
    assert resolve_key("pooler") == ("model", "pooler")
    assert resolve_key("text_column") == ("data", "text_column")


# --- coercion -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1e-4", 1e-4),
        ("3E-5", 3e-5),
        ("2.5", 2.5),
        ("12", 12),
        ("-3", -3),
        ("true", True),
        ("false", False),
        ("null", None),
        ("[-1,-2]", [-1, -2]),
        ("{num_heads: 2, grid: true}", {"num_heads": 2, "grid": True}),
        ("mean", "mean"),
        ("runs/1e5", "runs/1e5"),
        ("eval", "eval"),
    ],
)
def test_parse_value(text, expected):
    value = parse_value(text)
    assert value == expected and type(value) is type(expected)


def test_command_line_values_are_coerced_to_the_key_type():
    config = load_config(
        None,
        [
            "--train.learning_rate",
            "1e-4",
            "--epochs",
            "2",  # int -> float
            "--train.max_steps",
            "3.0",  # integral float -> int
            "--hidden_layers",
            "[-1,-2]",
            "--model.pooler_options",
            "{num_heads: 2, num_queries: 3}",
            "--data.data_files",
            "{train: a.csv, validation: b.csv}",
            "--trackers",
            "tensorboard,wandb",
            "--data.max_train_samples",
            "null",
        ],
    )
    assert config.train.learning_rate == pytest.approx(1e-4) and type(config.train.learning_rate) is float
    assert config.train.epochs == 2.0 and type(config.train.epochs) is float
    assert config.train.max_steps == 3 and type(config.train.max_steps) is int
    assert config.model.hidden_layers == [-1, -2]
    assert config.model.pooler_options == {"num_heads": 2, "num_queries": 3}
    assert config.data.data_files == {"train": "a.csv", "validation": "b.csv"}
    assert config.train.trackers == ["tensorboard", "wandb"]
    assert config.data.max_train_samples is None


def test_comma_separated_and_single_int_lists():
    assert load_config(None, ["--hidden_layers", "-1,-2"]).model.hidden_layers == [-1, -2]
    assert load_config(None, ["--hidden_layers", "-2"]).model.hidden_layers == [-2]


# --- mistakes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments, pattern",
    [
        (["--train.lerning_rate", "1"], r"unknown config key train.lerning_rate \(did you mean 'learning_rate'\?\)"),
        (["--lerning_rate", "1"], r"unknown config key 'lerning_rate' \(did you mean 'learning_rate'\?\)"),
        (["--model.pooler_option", "{}"], r"did you mean 'pooler_options'"),
        (["--zzzz", "1"], r"unknown config key 'zzzz'; run `poolft train --help`"),
        (["--trian.seed", "1"], r"unknown config section 'trian' in 'trian.seed'; valid sections: model, data, train"),
    ],
)
def test_unknown_keys_and_sections(arguments, pattern):
    with pytest.raises(PoolftError, match=pattern):
        load_config(None, arguments)


def test_unknown_key_and_section_in_a_file(tmp_path):
    with pytest.raises(PoolftError, match=r"unknown config key data.text_colum \(did you mean 'text_column'\?\)"):
        load_config(write(tmp_path / "a.yaml", "data:\n  text_colum: text\n"))
    with pytest.raises(PoolftError, match=r"unknown config section\(s\) optim; valid sections"):
        load_config(write(tmp_path / "b.yaml", "optim:\n  lr: 1\n"))
    with pytest.raises(PoolftError, match="unknown config key"):
        load_config(write(tmp_path / "c.yaml", "train:\n  1: 2\n"))  # a non-string key


def test_ambiguous_key_asks_for_the_section(monkeypatch):
    @dataclasses.dataclass
    class ExtraConfig:
        seed: int = 0

    monkeypatch.setitem(poolft.config.SECTIONS, "extra", ExtraConfig)
    with pytest.raises(PoolftError, match=r"config key 'seed' exists in train, extra; write it as section.seed"):
        resolve_key("seed")
    assert resolve_key("extra.seed") == ("extra", "seed")


@pytest.mark.parametrize(
    "arguments, pattern",
    [
        (["--train.seed", "1.5"], r"train.seed must be an integer, got 1.5"),
        (["--train.seed", "true"], r"train.seed must be an integer, got True"),
        (["--train.epochs", "abc"], r"train.epochs must be a number, got 'abc'"),
        (["--model.stock_head", "1"], r"model.stock_head must be true or false, got 1"),
        (["--model.pooler_options", "[1]"], r"model.pooler_options must be a mapping"),
        (["--model.hidden_layers", "{a: 1}"], r"model.hidden_layers must be a list"),
        (["--model.hidden_layers", "a,b"], r"model.hidden_layers\[0\] must be an integer, got 'a'"),
        (["--data.data_files", "train.csv"], r"data.data_files must be a mapping"),
        (["--model.pooler", "[mean]"], r"model.pooler must be a string"),
        (["--train.scheduler", "cosin"], r"train.scheduler='cosin' is not a valid choice \(did you mean 'cosine'\?\)"),
        (["--train.mixed_precision", "fp32"], r"use one of auto, no, fp16, bf16"),
        (["--data.task", "audio"], r"data.task='audio' is not a valid choice"),
    ],
)
def test_wrong_types_and_choices(arguments, pattern):
    with pytest.raises(PoolftError, match=pattern):
        load_config(None, arguments)


def test_wrong_type_in_a_file(tmp_path):
    with pytest.raises(PoolftError, match=r"train.batch_size must be an integer, got 'many'"):
        load_config(write(tmp_path / "a.yaml", "train:\n  batch_size: many\n"))


@pytest.mark.parametrize(
    "arguments, pattern",
    [
        (["--train.batch_size", "0"], r"train.batch_size must be at least 1, got 0"),
        (["--train.batch_size", "-4"], r"train.batch_size must be at least 1, got -4"),
        (["--train.eval_batch_size", "0"], r"train.eval_batch_size must be at least 1"),
        (["--data.max_length", "0"], r"data.max_length must be at least 1"),
        (["--train.gradient_accumulation_steps", "0"], r"gradient_accumulation_steps must be at least 1"),
        (["--train.learning_rate", "0"], r"train.learning_rate must be positive and finite, got 0.0"),
        (["--train.learning_rate", ".nan"], r"train.learning_rate must be a number, got nan"),
        (["--train.head_learning_rate", ".inf"], r"train.head_learning_rate must be positive and finite, got inf"),
        (["--train.weight_decay", ".nan"], r"train.weight_decay must be a number, got nan"),
        (["--train.head_learning_rate", "-1e-3"], r"train.head_learning_rate must be positive"),
        (["--train.epochs", "0"], r"train.epochs must be positive"),
        (["--train.max_steps", "0"], r"train.max_steps must be at least 1 \(or null\), got 0"),
        (["--data.max_eval_samples", "0"], r"data.max_eval_samples must be at least 1 \(or null\)"),
        (["--train.warmup_fraction", "1"], r"train.warmup_fraction must be in \[0, 1\), got 1.0"),
        (["--model.classifier_dropout", "-0.1"], r"model.classifier_dropout must be in \[0, 1\)"),
        (["--data.image_size", "0"], r"data.image_size must be a positive number of pixels"),
        (["--train.save_total_limit", "0"], r"train.save_total_limit must be at least 1"),
        (
            ["--model.lora", "{}", "--train.merge_lora_at_end", "true", "--train.save_model", "false"],
            r"train.merge_lora_at_end merges the saved model, which train.save_model false does not write; drop one",
        ),
    ],
)
def test_out_of_range_values(arguments, pattern):
    with pytest.raises(PoolftError, match=pattern):
        load_config(None, arguments)


def test_errors_are_one_line():
    for arguments in (["--train.lerning_rate", "1"], ["--train.seed", "x"], ["--train.batch_size", "0"]):
        with pytest.raises(PoolftError) as caught:
            load_config(None, arguments)
        assert "\n" not in str(caught.value)


# --- round trip ---------------------------------------------------------------------------------


def test_config_to_yaml_round_trips(tmp_path):
    config = load_config(
        None,
        [
            "--model.pooler",
            "window",
            "--model.pooler_options",
            "{levels: [1, 2], reduce: max}",
            "--model.hidden_layers",
            "[-1,-2]",
            "--model.layer_combine",
            "weighted",
            "--data.data_files",
            "{train: a.csv, validation: b.csv}",
            "--data.text_column",
            "text",
            "--data.image_size",
            "35",
            "--train.learning_rate",
            "1e-4",
            "--train.mixed_precision",
            "no",
            "--train.trackers",
            "[tensorboard]",
            "--train.output_dir",
            "runs/x",
            "--train.max_steps",
            "9",
        ],
    )
    text = config_to_yaml(config)
    assert "!!" not in text  # plain YAML, readable by any safe loader
    assert set(yaml.safe_load(text)) == {"model", "data", "train"}
    again = load_config(write(tmp_path / "config.yaml", text))
    assert again == config
    assert again.train.mixed_precision == "no"
    assert config_to_yaml(again) == text


def test_default_config_round_trips(tmp_path):
    assert load_config(write(tmp_path / "config.yaml", config_to_yaml(RunConfig()))) == RunConfig()


def test_pooler_options_from_yaml_are_type_checked(tmp_path):
    from poolft.models.backbones import check_pooler

    path = write(tmp_path / "gem.yaml", "model:\n  pooler: gem\n  pooler_options: {eps: 1e-6, p: 2}\n")
    config = load_config(path)
    check_pooler(config.model)
    assert config.model.pooler_options == {"eps": pytest.approx(1e-6), "p": 2}
    assert isinstance(config.model.pooler_options["eps"], float)
    config = load_config(None, ["--model.pooler=gem", "--model.pooler_options={learn_p: 1}"])
    with pytest.raises(PoolftError, match=r"pooler option gem.learn_p=1 has the wrong type; make it true or false"):
        check_pooler(config.model)
    config = load_config(None, ["--model.pooler=window", "--model.pooler_options={levels: [1, two]}"])
    with pytest.raises(PoolftError, match=r"window.levels=\[1, 'two'\] has the wrong type; make it a list of integers"):
        check_pooler(config.model)


def test_window_edges_option_is_type_checked():
    """``edges`` (a list of lists of numbers, default None) passes the override parser and the type check."""
    from poolft.models.backbones import check_pooler

    config = load_config(
        None, ["--model.pooler=window", "--model.pooler_options={edges: [[0, 0.1, 0.5, 1.0]], grid: true}"]
    )
    check_pooler(config.model)
    assert config.model.pooler_options["edges"] == [[0, 0.1, 0.5, 1.0]]
    for bad, shown in [("[0, 0.5, 1]", r"\[0, 0.5, 1\]"), ("[[0, half, 1]]", r"\[\[0, 'half', 1\]\]"), ("0.5", "0.5")]:
        config = load_config(None, ["--model.pooler=window", f"--model.pooler_options={{edges: {bad}}}"])
        with pytest.raises(
            PoolftError, match=rf"window.edges={shown} has the wrong type; make it a list of lists of numbers"
        ):
            check_pooler(config.model)
    config = load_config(
        None,
        [
            "--model.pooler=window",
            "--model.pooler_options={mode: sliding, grid: true, reduce_windows: map, map_size: 3}",
        ],
    )
    check_pooler(config.model)
