"""scripts/train.py's arguments: typed groups parsed by transformers' HfArgumentParser, each checking its own values,
and a run started from a YAML or JSON file of arguments."""

import dataclasses
import json

import pytest

from hf_minitransformer.training.arguments import GROUPS, RECIPES, TrainArguments, default_args, parse_args

from .conftest import TINY_ARGS, load_script, read_summary


train = load_script("train")


def test_each_flag_lives_in_one_group_and_the_flat_view_names_them_all():
    names = [field.name for group in GROUPS for field in dataclasses.fields(group)]
    assert len(names) == len(set(names))
    args = parse_args([])
    assert isinstance(args, TrainArguments) and list(args.flat()) == names
    assert (args.model.task, args.data.block_size, args.optimization.learning_rate, args.output.output_dir,
            args.evaluation.generation_num_beams) == ("clm", 128, 1e-3, "outputs/minitransformer", 1)
    # What a resume compares a flag the checkpoint does not record against: the defaults of the checkpoint's recipe.
    for recipe in RECIPES:
        assert default_args(recipe) == parse_args(["--recipe", recipe]).flat()


def test_literal_fields_are_flags_with_choices(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--task", "translation"])
    assert exit_info.value.code == 2
    printed = capsys.readouterr().err
    assert "argument --task: invalid choice: 'translation' (choose from 'clm', 'mlm', 'seq2seq')" in printed
    with pytest.raises(SystemExit):
        parse_args(["--embedded_task", "poems"])
    with pytest.raises(SystemExit):
        parse_args(["--no_such_flag", "1"])
    assert "unrecognized arguments: --no_such_flag 1" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--learning_rate", "nan"], "--learning_rate must be a positive number, got nan."),
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be positive, got 0."),
    (["--max_train_seconds", "inf"], "--max_train_seconds must be positive when given, got inf."),
    (["--eval_steps", "-3"], "--eval_steps must be positive when given, got -3."),
    (["--shuffle_buffer_size", "8"], "--shuffle_buffer_size 8 applies to --streaming runs only"),
    (["--average_last_checkpoints", "2"], "--average_last_checkpoints averages the run's checkpoints, but the run "
                                          "saves none: add --checkpointing_steps."),
    (["--generation_length_penalty", "nan"], "--generation_length_penalty must be a number, got nan."),
])
def test_each_group_refuses_its_own_bad_values_when_parsed(argv, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_args(argv)


def test_an_arguments_file_is_the_flags_it_names_and_flags_after_it_win(tmp_path):
    (tmp_path / "run.yaml").write_text("task: seq2seq\nrecipe: paper\nlearning_rate: 1e-3\nstreaming: false\n"
                                       "max_train_steps: 10\nsplit_digits: true\n")
    (tmp_path / "run.json").write_text(json.dumps({"task": "seq2seq", "recipe": "paper", "learning_rate": 1e-3,
                                                   "max_train_steps": 10, "split_digits": True}))
    flags = ["--task", "seq2seq", "--recipe", "paper", "--learning_rate", "1e-3", "--max_train_steps", "20",
             "--split_digits"]
    expected = parse_args(flags).flat()
    for name in ("run.yaml", "run.json"):
        # YAML reads 1e-3 as a string: the file's values are converted as the flags' are, to a float here.
        args = parse_args([str(tmp_path / name), "--max_train_steps", "20"])
        assert args.flat() == expected
        assert (args.optimization.adam_beta2, args.evaluation.generation_num_beams) == (0.98, 4)  # the recipe's


@pytest.mark.parametrize(("text", "message"), [
    ("task: seq2seq\nlearning_rat: 0.1\n", "names no argument of train.py: learning_rat"),
    ("- task\n- seq2seq\n", "must hold a mapping of argument names to values, not a list"),
    ("task: [clm, mlm]\n", "task must be a single value, got ['clm', 'mlm']"),
    ("task: clm\n  bad: indent\n", "is not valid YAML"),
    ("learning_rate: -1\n", "--learning_rate must be a positive number, got -1.0."),
])
def test_a_bad_arguments_file_is_one_value_error(tmp_path, text, message):
    (tmp_path / "run.yaml").write_text(text)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_args([str(tmp_path / "run.yaml")])


def test_a_run_started_from_a_file_records_flat_arguments(tmp_path, isolated_train_runs):
    fields = dict(zip(TINY_ARGS[::2], TINY_ARGS[1::2], strict=True))
    (tmp_path / "run.yaml").write_text("".join(f"{flag[2:]}: '{value}'\n" for flag, value in fields.items())
                                       + "max_train_steps: 2\n")
    out = tmp_path / "run"
    train.main([str(tmp_path / "run.yaml"), "--output_dir", str(out)])
    recorded = read_summary(out)["args"]
    assert recorded == parse_args([*TINY_ARGS, "--max_train_steps", "2", "--output_dir", str(out)]).flat()
    assert recorded["max_train_steps"] == 2 and recorded["vocab_size"] == 300
