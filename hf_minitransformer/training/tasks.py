"""What differs between the three training tasks, one object each; `TASKS` is the table every script reads.

A task names its model (the Auto class that loads a saved folder, the class that builds a new one, the Hub pipeline
tag) and supplies what training needs: the raw data, how it is tokenized, the collators, the evaluator and the
baselines the summary compares against. `scripts/train.py`'s loop asks the task and never branches on its name.
"""

import argparse
import dataclasses
import itertools
from collections.abc import Iterator
from typing import ClassVar

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
    tokenize_pairs,
)
from ..modeling_minitransformer import (
    MiniTransformerForCausalLM,
    MiniTransformerForMaskedLM,
    MiniTransformerForSeq2SeqLM,
)
from .evaluation import Evaluator, GenerationEvaluator, most_frequent_target, unigram_perplexity


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

    def data_args(self, args: argparse.Namespace) -> DataArgs:
        # Every field of DataArgs and Seq2SeqDataArgs is the flag of the same name.
        fields = dataclasses.fields(self.data_args_class)
        return self.data_args_class(**{field.name: getattr(args, field.name) for field in fields})

    def sequence_lengths(self, args: argparse.Namespace) -> dict[str, int]:
        """The longest sequence each stack of the model will see, by the flag that sets it."""
        return {"--block_size": args.block_size}

    def unit(self, args: argparse.Namespace) -> str:
        return f"blocks of {args.block_size} tokens"

    def load_raw(self, data_args: DataArgs) -> tuple[datasets.DatasetDict, bool, Iterator[list[str]]]:
        """(raw splits, whether each row is a whole document, the texts a new tokenizer is trained on)."""
        raw, documents = load_raw_datasets(data_args)
        return raw, documents, text_batches(raw["train"], data_args.text_column)

    def tokenizer_options(self, args: argparse.Namespace) -> dict:
        return {"with_mask_token": self.needs_mask_token, "split_digits": args.split_digits}

    def tokenize(self, args: argparse.Namespace, raw: datasets.DatasetDict, tokenizer: PreTrainedTokenizerBase,
                 documents: bool) -> tuple[datasets.DatasetDict, dict]:
        """The tokenized splits, and what the summary reports about them."""
        # The causal LM's labels are its inputs (the model shifts them); the masked LM's collator makes its own.
        packed = tokenize_and_pack(raw, tokenizer, args.text_column, args.block_size, documents,
                                   add_labels=self.is_decoder, num_proc=args.preprocessing_num_workers)
        return packed, {"block_size": args.block_size, "train_blocks": len(packed["train"]),
                        "validation_blocks": len(packed["validation"]),
                        "validation_tokens": len(packed["validation"]) * args.block_size}

    def collators(self, args: argparse.Namespace, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel):
        """(training collator, evaluation collator)."""
        return default_data_collator, default_data_collator

    def dataloaders(self, args: argparse.Namespace, processed: datasets.DatasetDict,
                    tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> tuple[DataLoader, Evaluator]:
        """Shuffled training batches, and the evaluator with its in-order validation batches."""
        train_collator, eval_collator = self.collators(args, tokenizer, model)
        splits = self.format_splits(processed)
        train_dataloader = DataLoader(
            splits["train"], shuffle=True, batch_size=args.per_device_train_batch_size, collate_fn=train_collator,
            generator=torch.Generator().manual_seed(args.seed),
        )
        eval_dataloader = DataLoader(splits["validation"], batch_size=args.per_device_eval_batch_size,
                                     collate_fn=eval_collator)
        return train_dataloader, self.evaluator(args, eval_dataloader, eval_collator, splits, tokenizer)

    def format_splits(self, processed: datasets.DatasetDict) -> dict[str, datasets.Dataset]:
        return {name: split.with_format("torch") for name, split in processed.items()}

    def evaluator(self, args: argparse.Namespace, eval_dataloader: DataLoader, eval_collator, splits: dict,
                  tokenizer: PreTrainedTokenizerBase) -> Evaluator:
        return Evaluator(eval_dataloader, shift_labels=self.is_decoder)

    def baselines(self, args: argparse.Namespace, processed: datasets.DatasetDict,
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

    def collators(self, args, tokenizer, model):
        # Training masks draw from the global torch RNG, which `save_state` checkpoints; evaluation has its own
        # seeded generator, reset before each evaluation so every evaluation scores the same masks.
        return (DataCollatorForLanguageModeling(tokenizer, mlm_probability=args.mlm_probability),
                DataCollatorForLanguageModeling(tokenizer, mlm_probability=args.mlm_probability, seed=args.seed))

    def evaluator(self, args, eval_dataloader, eval_collator, splits, tokenizer):
        return Evaluator(eval_dataloader, reseeded_collator=eval_collator)


class Seq2SeqTask(Task):
    """An encoder-decoder from source to target text: pairs instead of blocks, and generation in the evaluation."""

    name = "seq2seq"
    auto_class, model_class = AutoModelForSeq2SeqLM, MiniTransformerForSeq2SeqLM
    pipeline_tag, objective = "text2text-generation", "sequence to sequence (encoder-decoder, teacher forcing)"
    served_auto_classes = ("AutoConfig", "AutoModel", "AutoModelForSeq2SeqLM")
    data_args_class = Seq2SeqDataArgs
    baseline_column = "labels"

    def sequence_lengths(self, args):
        return {"--max_source_length": args.max_source_length, "--max_target_length": args.max_target_length,
                "--generation_max_new_tokens": max_new_tokens(args)}

    def unit(self, args):
        return "pairs"

    def load_raw(self, data_args):
        raw = load_seq2seq_datasets(data_args)
        texts = itertools.chain(text_batches(raw["train"], data_args.source_column),
                                text_batches(raw["train"], data_args.target_column))
        return raw, True, texts

    def tokenizer_options(self, args):
        # The dates task validates on years never trained on: their digits must be tokens it knows.
        dates = args.embedded_task == "dates" and not (args.dataset_name or args.train_file)
        return {"with_mask_token": False, "split_digits": args.split_digits or dates}

    def tokenize(self, args, raw, tokenizer, documents):
        pairs = tokenize_pairs(raw, tokenizer, args.source_column, args.target_column, args.max_source_length,
                               args.max_target_length, num_proc=args.preprocessing_num_workers)
        train_lengths = {name: [len(ids) for ids in pairs["train"][name]] for name in ("input_ids", "labels")}
        return pairs, {
            "max_source_length": args.max_source_length, "max_target_length": args.max_target_length,
            **describe_pairs(raw),
            "train_sources_truncated": sum(n == args.max_source_length for n in train_lengths["input_ids"]),
            "train_targets_truncated": sum(n == args.max_target_length for n in train_lengths["labels"]),
            "validation_target_tokens": sum(len(ids) for ids in pairs["validation"]["labels"]),
        }

    def collators(self, args, tokenizer, model):
        # Pads each batch (labels with -100) and asks the model for decoder_input_ids: the labels shifted right.
        collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
        return collator, collator

    def format_splits(self, processed):
        return dict(processed)  # rows of different lengths stay Python lists, which the collator pads

    def evaluator(self, args, eval_dataloader, eval_collator, splits, tokenizer):
        validation = splits["validation"]
        samples = validation.select(range(min(args.max_eval_generate_samples, len(validation))))
        return GenerationEvaluator(
            eval_dataloader,
            generate_dataloader=DataLoader(samples, batch_size=args.per_device_eval_batch_size,
                                           collate_fn=eval_collator),
            tokenizer=tokenizer,
            generation_kwargs={"num_beams": args.generation_num_beams, "max_new_tokens": max_new_tokens(args),
                               "do_sample": False},
        )

    def baselines(self, args, processed, tokenizer, vocab_size):
        return {**super().baselines(args, processed, tokenizer, vocab_size),
                "most_frequent_target": most_frequent_target(processed, tokenizer, args.max_eval_generate_samples)}


def max_new_tokens(args: argparse.Namespace) -> int:
    """The longest target seq2seq generation produces (evaluation and the saved generation config)."""
    return args.generation_max_new_tokens or args.max_target_length


TASKS: dict[str, Task] = {task.name: task for task in (CausalLMTask(), MaskedLMTask(), Seq2SeqTask())}


def task_of_config(config) -> Task:
    """The task whose head a config describes: encoder-decoder -> seq2seq, causal -> clm, otherwise mlm."""
    if config.is_encoder_decoder:
        return TASKS["seq2seq"]
    return TASKS["clm"] if config.is_decoder else TASKS["mlm"]
