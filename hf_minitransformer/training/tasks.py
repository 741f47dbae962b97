"""What differs between the three training tasks, one object each; `TASKS` is the table every script reads.

A task names its model (the Auto class that loads a saved folder, the class that builds a new one, the Hub pipeline
tag) and supplies what training needs: the raw data, how it is tokenized, the collators, the evaluator and the
baselines the summary compares against. `scripts/train.py`'s loop asks the task and never branches on its name.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, ClassVar

import datasets
import torch
from torch.utils.data import DataLoader
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    DataCollatorForLanguageModeling,
    DataCollatorForSeq2Seq,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    default_data_collator,
)

from ..data import (
    DataArgs,
    Seq2SeqDataArgs,
    describe_pairs,
    load_raw_datasets,
    load_seq2seq_datasets,
    text_batches,
    tokenize_and_pack,
    tokenize_and_pack_stream,
    tokenize_pairs,
    tokenize_pairs_stream,
)
from ..modeling_minitransformer import (
    MiniTransformerForCausalLM,
    MiniTransformerForMaskedLM,
    MiniTransformerForSeq2SeqLM,
)
from .batching import TokenBudgetBatchSampler
from .evaluation import Evaluator, GenerationEvaluator, most_frequent_target, unigram_perplexity
from .streaming import stream_dataloader


if TYPE_CHECKING:
    from .arguments import DataArguments, EvaluationArguments, OptimizationArguments


class Task:
    """A causal or masked language model over packed blocks of text; `Seq2SeqTask` overrides the data side."""

    name: ClassVar[str]
    auto_class: ClassVar[type]  # loads a saved model of this task
    model_class: ClassVar[type[PreTrainedModel]]  # builds a new one
    pipeline_tag: ClassVar[str]  # the Hub's name for what the model does
    objective: ClassVar[str]  # in words, for the model card
    # The Auto classes a saved folder serves through its remote code: the heads of one stack share its body.
    served_auto_classes: ClassVar[tuple[str, ...]] = ("AutoConfig", "AutoModel", "AutoModelForCausalLM",
                                                      "AutoModelForMaskedLM")
    is_decoder: ClassVar[bool] = False  # config.is_decoder: causal self-attention
    needs_mask_token: ClassVar[bool] = False
    data_args_class: ClassVar[type[DataArgs]] = DataArgs
    baseline_column: ClassVar[str] = "input_ids"  # the tokens the unigram baseline scores

    def published_as(self) -> dict:
        """The row of the table as plain data, for a process that must not import this package (the check of a
        staged Hub folder runs on remote code only)."""
        return {"task": self.name, "auto_class": self.auto_class.__name__, "pipeline_tag": self.pipeline_tag,
                "served_auto_classes": list(self.served_auto_classes)}

    def data_args(self, data: DataArguments) -> DataArgs:
        """Where this task's data comes from, as the summary records it: the fields of the data group that
        DataArgs (or Seq2SeqDataArgs) keeps."""
        fields = dataclasses.fields(self.data_args_class)
        return self.data_args_class(**{field.name: getattr(data, field.name) for field in fields})

    def sequence_lengths(self, data: DataArguments, evaluation: EvaluationArguments) -> dict[str, int]:
        """The longest sequence each stack of the model will see, by the flag that sets it."""
        return {"--block_size": data.block_size}

    def unit(self, data: DataArguments) -> str:
        return f"blocks of {data.block_size} tokens"

    def load_raw(self, data_args: DataArgs) -> tuple[datasets.DatasetDict, bool]:
        """(raw splits, whether each row is a whole document); with --streaming, "train" is an IterableDataset."""
        return load_raw_datasets(data_args)

    def tokenizer_texts(self, data_args: DataArgs, train: datasets.Dataset) -> Iterator[list[str]]:
        """The texts a new tokenizer is trained on, in batches."""
        return text_batches(train, data_args.text_column)

    def tokenizer_options(self, data: DataArguments) -> dict:
        return {"with_mask_token": self.needs_mask_token, "split_digits": data.split_digits}

    def tokenize(self, data: DataArguments, raw: datasets.DatasetDict, tokenizer: PreTrainedTokenizerBase,
                 documents: bool) -> tuple[datasets.DatasetDict, dict]:
        """The tokenized splits, and what the summary reports about them."""
        # The causal LM's labels are its inputs (the model shifts them); the masked LM's collator makes its own.
        packed = tokenize_and_pack(raw, tokenizer, data.text_column, data.block_size, documents,
                                   add_labels=self.is_decoder, num_proc=data.preprocessing_num_workers)
        return packed, {"block_size": data.block_size, "train_blocks": len(packed["train"]),
                        "validation_blocks": len(packed["validation"]),
                        "validation_tokens": len(packed["validation"]) * data.block_size}

    def tokenize_stream(self, data: DataArguments, stream: datasets.IterableDataset,
                        tokenizer: PreTrainedTokenizerBase, documents: bool) -> datasets.IterableDataset:
        """`tokenize` on the fly, for a training stream."""
        return tokenize_and_pack_stream(stream, tokenizer, data.text_column, data.block_size, documents,
                                        add_labels=self.is_decoder)

    def collators(self, optimization: OptimizationArguments, tokenizer: PreTrainedTokenizerBase,
                  model: PreTrainedModel):
        """(training collator, evaluation collator)."""
        return default_data_collator, default_data_collator

    def dataloaders(self, data: DataArguments, optimization: OptimizationArguments, evaluation: EvaluationArguments,
                    processed: datasets.DatasetDict, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel,
                    train_stream: datasets.IterableDataset | None = None) -> tuple[DataLoader, Evaluator]:
        """Shuffled training batches (of `train_stream` when given, else of the training split), and the evaluator
        with its in-order validation batches."""
        train_collator, eval_collator = self.collators(optimization, tokenizer, model)
        splits = self.format_splits(processed)
        # The generator seeds each epoch's shuffle (and the loader's worker seed), never the global RNG's draws.
        generator = torch.Generator().manual_seed(optimization.seed)
        if train_stream is not None:
            train_dataloader = stream_dataloader(data, optimization, train_stream, train_collator)
        elif optimization.max_tokens_per_batch:
            batches = TokenBudgetBatchSampler(self.example_lengths(data, processed["train"]),
                                              optimization.max_tokens_per_batch, optimization.seed)
            train_dataloader = DataLoader(splits["train"], batch_sampler=batches, collate_fn=train_collator,
                                          generator=generator)
        else:
            train_dataloader = DataLoader(splits["train"], shuffle=True,
                                          batch_size=optimization.per_device_train_batch_size,
                                          collate_fn=train_collator, generator=generator)
        eval_dataloader = DataLoader(splits["validation"], batch_size=evaluation.per_device_eval_batch_size,
                                     collate_fn=eval_collator)
        return train_dataloader, self.evaluator(data, evaluation, eval_dataloader, eval_collator, splits, tokenizer,
                                                model.config)

    def format_splits(self, processed: datasets.DatasetDict) -> dict[str, datasets.Dataset]:
        return {name: split.with_format("torch") for name, split in processed.items()}

    def longest_example(self, data: DataArguments) -> int:
        """The most tokens one training example can have (what a token budget must at least hold)."""
        return data.block_size

    def example_lengths(self, data: DataArguments, split: datasets.Dataset) -> list[int]:
        """Each training example's size in tokens, as a token budget counts it."""
        return [data.block_size] * len(split)  # packed blocks are all one length

    def evaluator(self, data: DataArguments, evaluation: EvaluationArguments, eval_dataloader: DataLoader,
                  eval_collator, splits: dict, tokenizer: PreTrainedTokenizerBase, config) -> Evaluator:
        return Evaluator(eval_dataloader, shift_labels=self.is_decoder)

    def baselines(self, evaluation: EvaluationArguments, processed: datasets.DatasetDict,
                  tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> dict:
        """What the summary sets the model's scores against: context-free guesses."""
        return {"unigram_perplexity": unigram_perplexity(processed, self.baseline_column, vocab_size),
                "uniform_perplexity": float(vocab_size)}


class CausalLMTask(Task):
    name = "clm"
    auto_class, model_class = AutoModelForCausalLM, MiniTransformerForCausalLM
    pipeline_tag, objective = "text-generation", "causal language model"
    is_decoder = True


class MaskedLMTask(Task):
    name = "mlm"
    auto_class, model_class = AutoModelForMaskedLM, MiniTransformerForMaskedLM
    pipeline_tag, objective = "fill-mask", "masked language model"
    needs_mask_token = True

    def collators(self, optimization, tokenizer, model):
        # Training masks draw from the global torch RNG, which `save_state` checkpoints; evaluation has its own
        # seeded generator, reset before each evaluation so every evaluation scores the same masks.
        probability = optimization.mlm_probability
        return (DataCollatorForLanguageModeling(tokenizer, mlm_probability=probability),
                DataCollatorForLanguageModeling(tokenizer, mlm_probability=probability, seed=optimization.seed))

    def evaluator(self, data, evaluation, eval_dataloader, eval_collator, splits, tokenizer, config):
        return Evaluator(eval_dataloader, reseeded_collator=eval_collator)


class Seq2SeqTask(Task):
    """An encoder-decoder from source to target text: pairs instead of blocks, and generation in the evaluation."""

    name = "seq2seq"
    auto_class, model_class = AutoModelForSeq2SeqLM, MiniTransformerForSeq2SeqLM
    pipeline_tag, objective = "text2text-generation", "sequence to sequence (encoder-decoder, teacher forcing)"
    served_auto_classes = ("AutoConfig", "AutoModel", "AutoModelForSeq2SeqLM")
    data_args_class = Seq2SeqDataArgs
    baseline_column = "labels"

    def sequence_lengths(self, data, evaluation):
        lengths = {"--max_source_length": data.max_source_length, "--max_target_length": data.max_target_length}
        if evaluation.generation_max_new_tokens:  # one derived from the sources is cut at the positions instead
            lengths["--generation_max_new_tokens"] = evaluation.generation_max_new_tokens
        return lengths

    def unit(self, data):
        return "pairs"

    def load_raw(self, data_args):
        return load_seq2seq_datasets(data_args), True

    def tokenizer_texts(self, data_args, train):
        # One vocabulary for sources and targets (shared embeddings), as the paper's shared BPE vocabulary.
        return itertools.chain(text_batches(train, data_args.source_column),
                               text_batches(train, data_args.target_column))

    def tokenizer_options(self, data):
        # The dates task validates on years never trained on: their digits must be tokens it knows.
        dates = data.embedded_task == "dates" and not (data.dataset_name or data.train_file)
        return {"with_mask_token": False, "split_digits": data.split_digits or dates}

    def tokenize(self, data, raw, tokenizer, documents):
        pairs = tokenize_pairs(raw, tokenizer, data.source_column, data.target_column, data.max_source_length,
                               data.max_target_length, num_proc=data.preprocessing_num_workers)
        train_lengths = {name: [len(ids) for ids in pairs["train"][name]] for name in ("input_ids", "labels")}
        return pairs, {
            "max_source_length": data.max_source_length, "max_target_length": data.max_target_length,
            **describe_pairs(raw),
            "train_sources_truncated": sum(n == data.max_source_length for n in train_lengths["input_ids"]),
            "train_targets_truncated": sum(n == data.max_target_length for n in train_lengths["labels"]),
            "validation_target_tokens": sum(len(ids) for ids in pairs["validation"]["labels"]),
        }

    def tokenize_stream(self, data, stream, tokenizer, documents):
        return tokenize_pairs_stream(stream, tokenizer, data.source_column, data.target_column,
                                     data.max_source_length, data.max_target_length)

    def collators(self, optimization, tokenizer, model):
        # Pads each batch (labels with -100) and asks the model for decoder_input_ids: the labels shifted right.
        collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
        return collator, collator

    def format_splits(self, processed):
        return dict(processed)  # rows of different lengths stay Python lists, which the collator pads

    def longest_example(self, data):
        return max(data.max_source_length, data.max_target_length)

    def example_lengths(self, data, split):
        # As fairseq's --max-tokens counts a pair: its longer side, the source or the target.
        def lengths(batch: dict) -> dict:
            return {"length": [max(len(source), len(target))
                               for source, target in zip(batch["input_ids"], batch["labels"], strict=True)]}

        return split.map(lengths, batched=True, remove_columns=split.column_names,
                         num_proc=data.preprocessing_num_workers, desc="Measuring pairs")["length"]

    def evaluator(self, data, evaluation, eval_dataloader, eval_collator, splits, tokenizer, config):
        validation = splits["validation"]
        samples = validation.select(range(min(evaluation.max_eval_generate_samples, len(validation))))
        return GenerationEvaluator(
            eval_dataloader,
            generate_dataloader=DataLoader(samples, batch_size=evaluation.per_device_eval_batch_size,
                                           collate_fn=eval_collator),
            tokenizer=tokenizer,
            generation_kwargs=generation_settings(data, evaluation, config.max_position_embeddings),
            max_length_offset=evaluation.generation_max_length_offset,
        )

    def baselines(self, evaluation, processed, tokenizer, vocab_size):
        return {**super().baselines(evaluation, processed, tokenizer, vocab_size),
                "most_frequent_target": most_frequent_target(processed, tokenizer,
                                                             evaluation.max_eval_generate_samples)}


def generation_settings(data: DataArguments, evaluation: EvaluationArguments, max_positions: int) -> dict:
    """How seq2seq generation decodes, in evaluation and in the saved generation config: beams, length penalty, and
    the longest target, which is --generation_max_new_tokens, else the longest source plus
    --generation_max_length_offset (cut at the decoder's positions), else --max_target_length."""
    if evaluation.generation_max_new_tokens:
        longest = evaluation.generation_max_new_tokens
    elif evaluation.generation_max_length_offset:
        longest = min(data.max_source_length + evaluation.generation_max_length_offset, max_positions)
    else:
        longest = data.max_target_length
    return {"num_beams": evaluation.generation_num_beams, "length_penalty": evaluation.generation_length_penalty,
            "max_new_tokens": longest, "do_sample": False}


TASKS: dict[str, Task] = {task.name: task for task in (CausalLMTask(), MaskedLMTask(), Seq2SeqTask())}


def task_of_config(config) -> Task:
    """The task whose head a config describes: encoder-decoder -> seq2seq, causal -> clm, otherwise mlm."""
    if config.is_encoder_decoder:
        return TASKS["seq2seq"]
    return TASKS["clm"] if config.is_decoder else TASKS["mlm"]
