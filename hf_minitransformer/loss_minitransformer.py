"""The fused LM loss of `config.logits_with_loss` "labelled" and "none": fewer logits, the same loss and gradients.

Its own file because it is a loss, not a module of the model (transformers keeps its losses in `loss/`). The modeling
file imports it relatively, so `save_pretrained` copies it for remote code.
"""

import torch
from torch import nn
from transformers.loss.loss_utils import fixed_cross_entropy


# Logits held at once by the fused loss: 2**24 floats (64 MiB) per chunk, but at most 32 chunks so that big batches
# on a GPU still run as a few large matmuls (and torch.compile unrolls a short loop). Smaller chunks made the CPU step
# slower than the dense loss (thin matmuls, each chunk re-reading the whole output matrix).
LOSS_CHUNK_ELEMENTS = 2**24
LOSS_MAX_CHUNKS = 32


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden_i W^T + b, label_i) over rows whose label is not `ignore_index`, one chunk of rows at a time.

    Cross-entropy's gradient with respect to the logits is softmax - one_hot, which needs the chunk's logits: so the
    forward pass computes the gradients of hidden, W and b chunk by chunk while it has them, and backward only scales
    them. Same FLOPs as projection + loss + their backward, but (chunk, vocab) logits in memory instead of
    (rows, vocab) logits, log-probabilities and their gradient (the approach of Liger's fused linear cross-entropy).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, ignore_index):
        # hidden: (rows, hidden) | weight: (vocab, hidden) | bias: (vocab,) or None | labels: (rows,)
        rows, vocab = hidden.shape[0], weight.shape[0]
        chunk = max(LOSS_CHUNK_ELEMENTS // vocab, -(-rows // LOSS_MAX_CHUNKS), 1)
        needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if needs_hidden else None
        # Accumulated over chunks in at least float32 (float64 stays float64), even for half-precision weights.
        accumulate = torch.promote_types(weight.dtype, torch.float32)
        grad_weight = torch.zeros(weight.shape, dtype=accumulate, device=weight.device) if needs_weight else None
        grad_bias = torch.zeros(vocab, dtype=accumulate, device=weight.device) if needs_bias else None
        total = torch.zeros((), dtype=accumulate, device=hidden.device)
        for start in range(0, rows, chunk):
            chunk_hidden, chunk_labels = hidden[start : start + chunk], labels[start : start + chunk]
            logits = nn.functional.linear(chunk_hidden, weight, bias)  # (chunk, vocab)
            log_probs = torch.log_softmax(logits, dim=-1, dtype=accumulate)  # (chunk, vocab)
            del logits  # one (chunk, vocab) tensor alive at a time, not two
            scored = (chunk_labels != ignore_index).unsqueeze(1)  # (chunk, 1)
            targets = torch.where(scored.squeeze(1), chunk_labels, 0).unsqueeze(1)  # (chunk, 1)
            total -= (log_probs.gather(1, targets) * scored).sum()
            if not (needs_hidden or needs_weight or needs_bias):
                continue
            grad_logits = log_probs.exp_()  # softmax, in place of the log-probabilities
            grad_logits.scatter_add_(1, targets, scored.to(grad_logits.dtype).neg()).mul_(scored)
            grad_logits = grad_logits.to(weight.dtype)
            if needs_hidden:
                grad_hidden[start : start + chunk] = grad_logits @ weight
            if needs_weight and grad_logits.dtype == chunk_hidden.dtype == accumulate:
                grad_weight.addmm_(grad_logits.T, chunk_hidden)  # sums inside the matmul: no (vocab, hidden) temporary
            elif needs_weight:  # half precision or autocast: half-precision matmul, float32 sum
                grad_weight += grad_logits.T @ chunk_hidden
            if needs_bias:
                grad_bias += grad_logits.sum(0)
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_output.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_output).to(ctx.weight_dtype)
        if grad_bias is not None:
            grad_bias = (grad_bias * grad_output).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, grad_bias, None, None


def lm_loss_with_fewer_logits(
    lm_head: nn.Linear,
    hidden_states: torch.Tensor,
    labels: torch.Tensor,
    logits_with_loss: str,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """`config.logits_with_loss` "labelled" or "none": (logits or None, loss), the loss of transformers' LM losses.

    `labels` are already aligned with `hidden_states` (shifted, for a causal model). The loss is the mean over scored
    positions, or their sum over `num_items_in_batch` when given (gradient accumulation), as `fixed_cross_entropy`.
    """
    labels = labels.to(hidden_states.device)
    # Only the scored positions reach the projection (a masked LM scores ~15%): the rest would be computed to be
    # ignored.
    scored = labels != ignore_index
    hidden_states, labels = hidden_states[scored], labels[scored]  # (scored, hidden), (scored,)
    if logits_with_loss == "labelled":
        logits = lm_head(hidden_states)  # (scored, vocab)
        logits_for_loss = logits.to(torch.promote_types(logits.dtype, torch.float32))
        return logits, fixed_cross_entropy(logits_for_loss, labels, num_items_in_batch, ignore_index)
    total = ChunkedLinearCrossEntropy.apply(hidden_states, lm_head.weight, lm_head.bias, labels, ignore_index)
    if num_items_in_batch is None:
        return None, total / labels.shape[0]
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return None, total / num_items_in_batch


def lm_logits_and_loss(
    model: nn.Module,
    hidden_states: torch.Tensor,
    labels: torch.Tensor | None,
    aligned_labels: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(logits, loss) of an LM head (`model.lm_head`) over `hidden_states`, as `model.config.logits_with_loss` asks.

    "all", or no labels: every position is projected, and the loss is the model's transformers loss on `labels`
    (ForCausalLMLoss shifts them itself). Otherwise the fewer-logits loss scores `aligned_labels`: the labels as
    aligned with `hidden_states` (default `labels`; the causal head passes them shifted).
    """
    config = model.config
    if labels is None or config.logits_with_loss == "all":
        logits = model.lm_head(hidden_states)
        if labels is None:
            return logits, None
        return logits, model.loss_function(logits=logits, labels=labels, vocab_size=config.vocab_size, **kwargs)
    aligned_labels = labels if aligned_labels is None else aligned_labels
    return lm_loss_with_fewer_logits(model.lm_head, hidden_states, aligned_labels, config.logits_with_loss,
                                     kwargs.get("num_items_in_batch"))
