"""Evaluation during and after training: held-out loss and perplexity, generation scores, and the baselines.

Every number is computed per sample and gathered over all processes with `gather_for_metrics`, which drops the samples
accelerate repeats to even out the last batch: the result is the same on 1 or 16 processes.
"""

import dataclasses
import itertools
import math
from collections import Counter
from collections.abc import Iterator

import datasets
import sacrebleu
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList


logger = get_logger(__name__)

METRIC_FORMATS = {"loss": "loss {:.4f}", "perplexity": "perplexity {:.2f}", "bleu": "BLEU {:.2f}",
                  "chrf": "chrF {:.2f}", "exact_match": "exact match {:.3f}"}


@dataclasses.dataclass
class Evaluator:
    """Held-out token loss and perplexity."""

    eval_dataloader: DataLoader
    shift_labels: bool = False  # the causal LM scores each label from the positions before it
    reseeded_collator: object | None = None  # a collator with its own RNG (masked LM): reseeded before each run
    generation_kwargs: dict = dataclasses.field(default_factory=dict)  # how an encoder-decoder's `generate` decodes

    def prepare(self, accelerator: Accelerator):
        """Shard the validation loaders across processes (after the training loader, so checkpoints line up)."""
        self.eval_dataloader = accelerator.prepare(self.eval_dataloader)

    def __call__(self, accelerator: Accelerator, model: torch.nn.Module) -> dict[str, float]:
        model.eval()
        if self.reseeded_collator is not None:
            self.reseeded_collator.create_rng("pt")  # the same masks at every evaluation
        metrics = self.score(accelerator, model)
        model.train()
        return metrics

    def score(self, accelerator: Accelerator, model: torch.nn.Module) -> dict[str, float]:
        return evaluate_loss(accelerator, model, self.eval_dataloader, self.shift_labels)

    def summary(self) -> dict:
        """What the training summary records about the evaluation, besides its metrics."""
        return {}


@dataclasses.dataclass
class GenerationEvaluator(Evaluator):
    """Also generates the targets of the first validation pairs and scores them: BLEU, chrF and exact match."""

    generate_dataloader: DataLoader | None = None
    tokenizer: PreTrainedTokenizerBase | None = None
    max_length_offset: int | None = None  # each target stops at its source's length + this (paper §6.1: 50)
    generated: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # last (reference, prediction)s

    def prepare(self, accelerator: Accelerator):
        super().prepare(accelerator)
        self.generate_dataloader = accelerator.prepare(self.generate_dataloader)

    def score(self, accelerator: Accelerator, model: torch.nn.Module) -> dict[str, float]:
        metrics = super().score(accelerator, model)
        predictions, references = generate_targets(accelerator, model, self.generate_dataloader, self.tokenizer,
                                                    self.generation_kwargs, self.max_length_offset)
        self.generated = list(zip(references, predictions))
        return {**metrics, **sequence_scores(predictions, references)}

    def summary(self) -> dict:
        examples = [{"reference": r, "prediction": p} for r, p in self.generated[:10]]
        return {"generation": {**self.generation_kwargs, "max_length_offset": self.max_length_offset,
                               "samples": len(self.generated), "examples": examples},
                "sacrebleu_signatures": {"bleu": str(BLEU.get_signature()), "chrf": str(CHRF.get_signature())}}


class SourceLengthLimit(StoppingCriteria):
    """Stops each sequence at its source's length plus `offset` new tokens (Vaswani et al. §6.1: "maximum output
    length during inference to input length + 50, but terminate early when possible").

    `generate` asks its stopping criteria about every running sequence, batch rows first, each row's beams (or
    kept candidates) next to each other; `source_lengths` has one length per row.
    """

    def __init__(self, source_lengths: torch.Tensor, offset: int, prompt_length: int):
        self.limits = source_lengths + offset + prompt_length  # whole decoder sequence, its start token included

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        per_row = input_ids.shape[0] // self.limits.shape[0]
        return input_ids.shape[1] >= self.limits.repeat_interleave(per_row)


def evaluate_loss(accelerator: Accelerator, model: torch.nn.Module, eval_dataloader: DataLoader, shift_labels: bool
                  ) -> dict[str, float]:
    """Mean loss per scored token over the validation data (each sample counted once) and its exponential."""
    totals = []
    for batch in eval_dataloader:
        with torch.no_grad():
            # Logits rather than the model's loss: the loss is one mean over the batch, which would keep the repeated
            # samples of an evened-out last batch in it after the gather dropped them.
            logits = model(**{name: value for name, value in batch.items() if name != "labels"}).logits
        totals.append(accelerator.gather_for_metrics(sample_losses(logits, batch["labels"], shift_labels)))
    loss_sum, token_count = torch.cat(totals).sum(dim=0).tolist()
    if token_count == 0:
        logger.warning("The evaluation scored no token (every label is -100, e.g. a tiny --mlm_probability): its "
                       "loss and perplexity are undefined.")
        return {"loss": float("nan"), "perplexity": float("nan")}
    eval_loss = loss_sum / token_count
    return {"loss": eval_loss, "perplexity": math.exp(eval_loss) if eval_loss < 100 else float("inf")}


def sample_losses(logits: torch.Tensor, labels: torch.Tensor, shift_labels: bool) -> torch.Tensor:
    """(batch, 2): each sample's summed token cross-entropy and its number of scored tokens (labels != -100), scored as
    the model's loss scores them: the causal LM predicts each label from the positions before it."""
    if shift_labels:
        logits, labels = logits[:, :-1], labels[:, 1:]
    # cross_entropy takes the classes in dim 1: (batch, vocab, seq) -> (batch, seq); ignored positions give 0.
    losses = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100,
                                               reduction="none")
    return torch.stack([losses.sum(dim=-1), (labels != -100).sum(dim=-1).float()], dim=-1)


def generate_targets(accelerator: Accelerator, model: torch.nn.Module, dataloader: DataLoader,
                     tokenizer: PreTrainedTokenizerBase, generation_kwargs: dict, max_length_offset: int | None = None
                     ) -> tuple[list[str], list[str]]:
    """Generated targets and references (the labels) of `dataloader`'s pairs, decoded, in order, on every process."""
    generator = accelerator.unwrap_model(model)
    predictions, references = [], []
    for batch in dataloader:
        stopping = StoppingCriteriaList()
        if max_length_offset is not None:  # the decoder's prompt is its start token
            stopping.append(SourceLengthLimit(batch["attention_mask"].sum(dim=-1), max_length_offset, 1))
        with torch.no_grad():
            generated = generator.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                           stopping_criteria=stopping, **generation_kwargs)
        # Each process stops at its own longest output and pads labels to its own longest target: pad to the
        # longest over processes, so that the gather can concatenate.
        generated = accelerator.pad_across_processes(generated, dim=1, pad_index=tokenizer.pad_token_id)
        labels = accelerator.pad_across_processes(batch["labels"], dim=1, pad_index=-100)
        generated, labels = accelerator.gather_for_metrics((generated, labels))
        predictions += tokenizer.batch_decode(generated, skip_special_tokens=True)
        references += tokenizer.batch_decode(labels.masked_fill(labels == -100, tokenizer.pad_token_id),
                                             skip_special_tokens=True)
    return [text.strip() for text in predictions], [text.strip() for text in references]


# sacrebleu's defaults, as its command line and `corpus_bleu` use them; once they have scored, their signatures
# (tokenizer, smoothing, version, ...) say which in the summary.
BLEU, CHRF = sacrebleu.BLEU(), sacrebleu.CHRF()


def sequence_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu, 0-100) and the exact-match rate (0-1) of predictions against references."""
    return {
        "bleu": BLEU.corpus_score(predictions, [references]).score,
        "chrf": CHRF.corpus_score(predictions, [references]).score,
        "exact_match": sum(p == r for p, r in zip(predictions, references, strict=True)) / len(references),
    }


def format_metrics(metrics: dict) -> str:
    return ", ".join(text.format(metrics[name]) for name, text in METRIC_FORMATS.items() if name in metrics)


def unigram_perplexity(processed: datasets.DatasetDict, column: str, vocab_size: int) -> float:
    """Perplexity on the validation tokens of `column` of the context-free baseline: training-set token frequencies
    (add-one)."""

    def token_ids(split: datasets.Dataset) -> Iterator[torch.Tensor]:
        for batch in split.iter(batch_size=4096):
            yield torch.tensor(list(itertools.chain.from_iterable(batch[column])), dtype=torch.long)

    counts = torch.ones(vocab_size, dtype=torch.float64)
    for ids in token_ids(processed["train"]):
        counts += torch.bincount(ids, minlength=vocab_size).double()
    log_probs = (counts / counts.sum()).log()
    validation = torch.cat(list(token_ids(processed["validation"])))
    return math.exp(-log_probs[validation].mean().item())


def most_frequent_target(processed: datasets.DatasetDict, tokenizer: PreTrainedTokenizerBase,
                         num_samples: int) -> dict:
    """The metric baseline of seq2seq: always answer the most frequent training target, scored like generation."""
    ids, count = Counter(map(tuple, processed["train"]["labels"])).most_common(1)[0]
    prediction = tokenizer.decode(ids, skip_special_tokens=True).strip()
    validation = processed["validation"]
    labels = list(validation.select(range(min(num_samples, len(validation))))["labels"])
    references = [text.strip() for text in tokenizer.batch_decode(labels, skip_special_tokens=True)]
    return {"prediction": prediction, "train_count": count,
            **sequence_scores([prediction] * len(references), references)}
