"""Checkpoint averaging, as fairseq's scripts/average_checkpoints.py does it: the element-wise mean of the model
weights of a run's last K checkpoints, written as an ordinary model folder.

Vaswani et al. §6.1: "For the base models, we used a single model obtained by averaging the last 5 checkpoints, which
were written at 10-minute intervals." The checkpoints must be of one run (the arguments that shape the weights
equal), verified against their manifests, and hold the same weights by name and shape; anything else is refused
before a file is written. scripts/average_checkpoints.py is the command line; `average_at_end_of_training` is
scripts/train.py's --average_last_checkpoints.
"""

import copy
import json
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import broadcast_object_list
from transformers import AutoTokenizer, GenerationConfig, PreTrainedModel

from ..atomic_files import folder_renamed_into_place
from ..configuration_minitransformer import MiniTransformerConfig
from .arguments import changed_run_args, is_within
from .checkpointing import (
    CHECKPOINTS_DIR,
    CONFIG,
    GENERATION_CONFIG,
    RUN_ARGS,
    TRAINER_STATE,
    checkpoint_problem,
    numbered_checkpoints,
    read_checkpoint_weights,
    read_run_args,
)
from .evaluation import Evaluator, format_metrics
from .tasks import Task, task_of_config
from .tracking import warn


logger = get_logger(__name__)

AVERAGED_DIR = "averaged"  # train.py's --average_last_checkpoints writes OUTPUT_DIR/averaged
PROVENANCE = "averaged_checkpoints.json"  # in the averaged folder: which checkpoints (names and steps) it averages


def select_checkpoints(run_dir: Path, last: int) -> list[Path]:
    """The `last` newest checkpoints of the run in `run_dir`, oldest first: each intact (its manifest verifies) and
    all saved by one run."""
    if last < 1:
        raise ValueError(f"--last must be at least 1 (the number of checkpoints to average), got {last}.")
    root = run_dir / CHECKPOINTS_DIR
    available = numbered_checkpoints(root)
    if not available:
        raise ValueError(f"--last {last}: {str(root)!r} holds no checkpoint; train with --checkpointing_steps.")
    if last > len(available):
        raise ValueError(f"--last {last}: {str(root)!r} holds only {len(available)} "
                         f"({', '.join(path.name for path in available)}); pass --last {len(available)} or fewer, or "
                         "train with more checkpoints kept (--checkpoints_total_limit).")
    chosen = available[-last:]
    for path in chosen:
        problem = checkpoint_problem(path)
        if problem is not None:
            raise ValueError(f"{path} cannot be averaged: {problem}. Average checkpoints that verify, e.g. fewer "
                             "with --last.")
    check_one_run(chosen)
    return chosen


def check_one_run(checkpoints: list[Path]):
    """Every checkpoint was saved with the arguments of the newest one, except those a resume may change."""
    recorded = [(path, args) for path in checkpoints if (args := read_run_args(path)) is not None]
    if len(recorded) < len(checkpoints):
        unrecorded = [path.name for path in checkpoints if path not in dict(recorded)]
        warn(f"no {RUN_ARGS} in {', '.join(unrecorded)} (saved before checkpoints recorded their run's arguments): "
             "only the weights' names and shapes show that the checkpoints are of one run.")
    if not recorded:
        return
    newest, newest_args = recorded[-1]
    for path, saved in recorded[:-1]:
        changed = changed_run_args(saved, newest_args)
        if changed:
            raise ValueError(f"{path} and {newest} were saved by runs with other arguments ({'; '.join(changed)}): "
                             "their weights come from two trainings, and their mean is not a model of either. "
                             "Average checkpoints of one run.")


def average_weights(checkpoints: list[Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the checkpoints' model weights, summed in float64 and returned in each weight's saved
    dtype. The checkpoints must hold the same weights (names, shapes, dtypes); a weight that is not floating point
    (a counter, say) must be equal in all of them, and is kept."""
    first = read_checkpoint_weights(checkpoints[0])
    sums = {name: tensor.to(torch.float64, copy=True) if tensor.is_floating_point() else tensor
            for name, tensor in first.items()}
    for path in checkpoints[1:]:
        weights = read_checkpoint_weights(path)
        check_same_weights(first, weights, checkpoints[0], path)
        for name, tensor in weights.items():
            if tensor.is_floating_point():
                sums[name] += tensor.double()
            elif not torch.equal(tensor, first[name]):
                raise ValueError(f"{name} is not a floating-point weight and differs between {checkpoints[0]} and "
                                 f"{path}: it has no mean.")
    return {name: (total / len(checkpoints)).to(first[name].dtype) if total.is_floating_point() else total
            for name, total in sums.items()}


def check_same_weights(reference: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], reference_path: Path,
                       path: Path):
    if weights.keys() != reference.keys():
        only = sorted(weights.keys() ^ reference.keys())
        raise ValueError(f"{reference_path} and {path} hold different weights ({', '.join(only[:3])}"
                         f"{', ...' if len(only) > 3 else ''} in one only): they are not checkpoints of one model.")
    for name, tensor in weights.items():
        if (tensor.shape, tensor.dtype) != (reference[name].shape, reference[name].dtype):
            raise ValueError(f"{name} is {reference[name].dtype} {tuple(reference[name].shape)} in {reference_path} "
                             f"but {tensor.dtype} {tuple(tensor.shape)} in {path}: they are not checkpoints of one "
                             "model.")


def description_folder(checkpoint: Path, run_dir: Path) -> Path:
    """Where the config of a checkpoint's model is: in the checkpoint, or, for a checkpoint saved before checkpoints
    held one, in the run's final model folder."""
    for folder in (checkpoint, run_dir):
        if (folder / CONFIG).is_file():
            return folder
    raise ValueError(f"{checkpoint} holds no {CONFIG} (saved before checkpoints held one), and neither does {run_dir} "
                     "(the run did not finish): nothing says what model its weights are.")


def described_model(checkpoint: Path, run_dir: Path) -> PreTrainedModel:
    """The model the checkpoint's config describes, on the meta device (no memory), with its generation config."""
    folder = description_folder(checkpoint, run_dir)
    config = MiniTransformerConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = task_of_config(config).model_class(config)
    if (folder / GENERATION_CONFIG).is_file() and model.can_generate():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    return model


def full_state_dict(model: PreTrainedModel, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`weights` as the model's state dict, each tied weight under all its names (save_pretrained keeps one of them);
    weights that are not the model's are refused."""
    state_dict = dict(weights)
    for target, source in model.all_tied_weights_keys.items():
        if source not in state_dict and target in state_dict:  # the checkpoint kept the tie under the other name
            state_dict[source] = state_dict[target]
        if source in state_dict:
            state_dict[target] = state_dict[source]
    expected = model.state_dict()
    missing, unexpected = sorted(expected.keys() - state_dict.keys()), sorted(state_dict.keys() - expected.keys())
    wrong = [name for name in expected.keys() & state_dict.keys() if expected[name].shape != state_dict[name].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"The checkpoints' weights are not those of the model their {CONFIG} describes ("
                         f"{type(model).__name__}; missing: {missing[:3]}; unexpected: {unexpected[:3]}; other "
                         f"shapes: {wrong[:3]}).")
    return state_dict


def write_averaged_model(checkpoints: list[Path], run_dir: Path, destination: Path, overwrite: bool = False):
    """Average the checkpoints into `destination`: weights (safetensors), config with auto_map, the code files,
    generation config, the newest checkpoint's tokenizer, and which checkpoints it averages; written under a
    temporary name, checked to reload to the averaged weights, then renamed."""
    model = described_model(checkpoints[-1], run_dir)  # first: a checkpoint that says nothing is refused unread
    tokenizer = AutoTokenizer.from_pretrained(checkpoints[-1])
    state_dict = full_state_dict(model, average_weights(checkpoints))
    floating = {tensor.dtype for tensor in state_dict.values() if tensor.is_floating_point()}
    if len(floating) == 1:
        model.to(floating.pop())  # the config then records the saved dtype
    provenance = [{"checkpoint": path.name, "step": json.loads((path / TRAINER_STATE).read_text())["step"]}
                  for path in checkpoints]
    with folder_renamed_into_place(destination, replace=overwrite) as partial:
        model.save_pretrained(partial, state_dict=state_dict)
        tokenizer.save_pretrained(partial)
        (partial / PROVENANCE).write_text(json.dumps({"averaged": provenance}, indent=2) + "\n")
        check_reloads(task_of_config(model.config), partial, state_dict)


def check_reloads(task: Task, folder: Path, state_dict: dict[str, torch.Tensor]):
    """The written folder loads with the task's Auto class to exactly the averaged weights."""
    reloaded = task.auto_class.from_pretrained(folder, dtype="auto").state_dict()
    differing = [name for name, tensor in state_dict.items() if not torch.equal(reloaded[name], tensor)]
    if differing:
        raise ValueError(f"The averaged folder written to {folder} does not reload to the averaged weights "
                         f"({', '.join(differing[:3])}); nothing was kept.")


def check_destination(run_dir: Path, destination: Path, overwrite: bool):
    """The averaged folder never replaces the run it reads, or goes among its checkpoints."""
    if is_within(run_dir, destination):
        raise ValueError(f"--output_dir {str(destination)!r} is (or holds) the run folder {str(run_dir)!r}, whose "
                         f"checkpoints it averages; pass another folder, e.g. {str(run_dir / AVERAGED_DIR)!r}.")
    if is_within(destination, run_dir / CHECKPOINTS_DIR):
        raise ValueError(f"--output_dir {str(destination)!r} lies in {str(run_dir / CHECKPOINTS_DIR)!r}, among the "
                         "checkpoints a run rotates and resumes from; pass a folder outside it.")
    if destination.exists() and not destination.is_dir():
        raise ValueError(f"--output_dir {str(destination)!r} is a file, not a folder.")
    if destination.exists() and not overwrite:
        raise ValueError(f"--output_dir {str(destination)!r} already exists; pass --overwrite_output_dir to replace "
                         "it, or another folder.")


def average_at_end_of_training(accelerator: Accelerator, output_dir: str, last: int, task: Task, evaluator: Evaluator,
                               stopped_early: bool) -> dict:
    """train.py's --average_last_checkpoints K: average the run's last K checkpoints into OUTPUT_DIR/averaged
    (replacing an earlier one) and evaluate that model as the final model was; returns what the summary records.

    When --max_train_seconds stopped the run before it saved K checkpoints, the averaging is skipped with a warning
    (the summary says why) rather than failing the run."""
    run_dir = Path(output_dir)
    problem, names = None, []
    if accelerator.is_main_process:
        try:
            checkpoints = select_checkpoints(run_dir, last)
            write_averaged_model(checkpoints, run_dir, run_dir / AVERAGED_DIR, overwrite=True)
            names = [path.name for path in checkpoints]
        except ValueError as error:
            problem = str(error)
    problem, names = broadcast_object_list([problem, names])  # every rank learns the main process's outcome
    if problem is not None:
        if not stopped_early:
            raise ValueError(f"--average_last_checkpoints {last}: {problem}")
        warn(f"--average_last_checkpoints {last} skipped (the run stopped early): {problem}")
        return {"skipped": problem}
    # Every process loads the whole averaged model and scores its share of the validation data, under the run's mixed
    # precision, as the final model was scored. A copy of the evaluator keeps the final model's generated examples
    # for the summary.
    model = task.auto_class.from_pretrained(run_dir / AVERAGED_DIR, dtype="auto").to(accelerator.device)
    with accelerator.autocast():
        metrics = copy.copy(evaluator)(accelerator, model)
    logger.info(f"Averaged {', '.join(names)} into {run_dir / AVERAGED_DIR}: eval {format_metrics(metrics)}")
    return {"folder": AVERAGED_DIR, "checkpoints": names, "final_eval": metrics}
