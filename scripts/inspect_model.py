#!/usr/bin/env python
"""Follow one text through a MiniTransformer, stage by stage, as the source document does, and draw its attention.

    python scripts/inspect_model.py outputs/dates --text "March 14th, 1987" --target "1987-03-14" \
        --output_dir outputs/dates-inspect
    python scripts/inspect_model.py outputs/main_job --text "def main(args):" --output_dir outputs/main_job-inspect

MODEL is a saved model folder (trained here, converted, or downloaded; add --trust_remote_code for a folder whose
code is not this package's). The head follows the config: encoder-decoder -> AutoModelForSeq2SeqLM (--target is the
decoder's input), causal -> AutoModelForCausalLM, otherwise AutoModelForMaskedLM.

It prints the walkthrough as a table (stage, symbol, shape in the document's names n, m, d_model, h, d_k, d_ff, and
a few values) and writes to --output_dir: positional_encoding.png, one attention_<stack>_layer<i>_<kind>.png per
attention (every head, axes labelled with the tokens), walkthrough.tsv (the table) and walkthrough.html, one
self-contained page (figures inlined) with table and figures in the document's order. Needs matplotlib
(`pip install -e .[inspect]`).

It refuses, with one `error:` line, what it cannot trace: a folder that is not a MiniTransformer (a GPT-2 or BERT
checkpoint: convert it first with scripts/convert.py), weights that do not load or are not finite, an empty --text,
--target for a model that is not an encoder-decoder, an --output_dir that is a file. A folder saved without a
language-model head (a bare model, a classifier) is traced with a note: its logits come from an untrained head.
"""

import argparse
import base64
import html
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoTokenizer

import hf_minitransformer  # noqa: F401  (registers MiniTransformer with the Auto classes)
from hf_minitransformer.training.tasks import task_of_config
from hf_minitransformer.walkthrough import Stage, Walkthrough, top_predictions, trace


# The document's sections, by the `kind` of the stages each one holds.
SECTIONS = [
    ("embeddings", "Input and embedding: X is n x d_model, plus the positional encoding PE"),
    ("self_attn", "Self-attention, multi-head: Q_i, K_i, V_i, "
                  "softmax(Q_i K_i^T / sqrt(d_k)) V_i, Concat W_O, then Add & Norm"),
    ("masked_self_attn", "Masked self-attention: position t sees positions <= t only"),
    ("cross_attn", "Cross-attention: queries from the decoder, K and V from the encoder output"),
    ("ffn", "Feed-forward network: FFN(Z) = ReLU(Z W_1 + b_1) W_2 + b_2, then Add & Norm"),
    ("", "Layer output"),
    ("output", "Output: final hidden states, logits, next-token probabilities"),
]
NUM_VALUES = 4  # values shown per stage: the first ones of the first row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="A saved model folder (config, weights and tokenizer).")
    parser.add_argument("--text", required=True, help="The input text (the source of an encoder-decoder).")
    parser.add_argument("--target", default=None,
                        help="Encoder-decoder only: the target text the decoder reads (teacher forcing). Default: "
                             "the decoder reads its start token only.")
    parser.add_argument("--output_dir", required=True, help="Where the figures, the table and the page are written.")
    parser.add_argument("--trust_remote_code", action="store_true",
                        help="Load a folder whose modeling code is its own (remote code) rather than this package's.")
    parser.add_argument("--dpi", type=int, default=80, help="Resolution of the figures.")
    args = parser.parse_args(argv)
    if not args.text:
        parser.error("--text must not be empty: the walkthrough follows its tokens")
    if args.dpi <= 0:
        parser.error(f"--dpi must be positive, got {args.dpi}")
    output_dir = Path(args.output_dir)
    blocking = next((p for p in (output_dir, *output_dir.absolute().parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        parser.error(f"--output_dir {args.output_dir!r} cannot be a folder: {str(blocking)!r} is a file")
    return args


def load_model(path: str, trust_remote_code: bool):
    """The head that fits the config, in eval mode, and the folder's tokenizer; ValueError for a folder it cannot
    trace."""
    if not (Path(path) / "config.json").is_file():
        raise ValueError(f"MODEL {path!r} is not a saved model folder (no config.json).")
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    if config.model_type != "minitransformer":
        raise ValueError(f"MODEL {path!r} is a {config.model_type!r} model; the walkthrough traces MiniTransformer "
                         "models only (a Marian, GPT-2 or BERT checkpoint converts with scripts/convert.py).")
    auto_class = task_of_config(config).auto_class
    try:
        model, info = auto_class.from_pretrained(path, trust_remote_code=trust_remote_code, output_loading_info=True)
    except SafetensorError as error:
        raise ValueError(f"MODEL {path!r}: the weights do not load ({error}); the file is truncated or "
                         "damaged.") from None
    except OSError as error:
        raise ValueError(f"MODEL {path!r} has no weights that load ({str(error).strip().splitlines()[0]}).") from None
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"MODEL {path!r} has weights that are not finite numbers ({name} holds NaN or inf): "
                             "the table would be NaN. Use an earlier checkpoint of the run.")
    if info["missing_keys"]:
        print(f"note: {path} holds a {', '.join(config.architectures or ['model'])} without the weights of a "
              f"language-model head ({', '.join(sorted(info['missing_keys']))}, newly initialised here): the stages "
              "up to the final hidden states are the saved model's, the logits and probabilities come from an "
              "untrained head.")
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    return model.eval(), tokenizer


def check_finite(walkthrough: Walkthrough):
    """Refuse a trace whose values overflowed. The scaled scores are left out: masked positions hold the mask's
    large negative value by design."""
    for stage in walkthrough.stages:
        if not stage.name.endswith(".scores") and not torch.isfinite(stage.tensor).all():
            raise ValueError(f"The forward pass is not finite from stage {stage.name} ({stage.title}) on: the "
                             "model's weights overflow on this text, and the table would show NaN or inf.")


# --- the table ----------------------------------------------------------------------------------------------------

def shape_text(stage: Stage) -> str:
    """(h=4, n=7, d_k=16): each dimension with the document's name and its size."""
    parts = []
    for name, size in zip(stage.dims, stage.tensor.shape, strict=True):
        parts.append(f"{name}={size}")
    return "(" + ", ".join(parts) + ")"


def values_text(stage: Stage) -> str:
    """The first few values of the first row (of the first head), e.g. [0.12, -1.3, 0.5, 2.01, ...]: token ids as
    integers, and a score the mask pushed to the dtype's lowest value (or -inf) as "masked"."""
    row = stage.tensor.reshape(-1, stage.tensor.shape[-1])[0]
    if row.is_floating_point():
        masked = torch.finfo(row.dtype).min / 2
        shown = ["masked" if value <= masked else f"{value:.3g}" for value in row[:NUM_VALUES].float().tolist()]
    else:
        shown = [str(value) for value in row[:NUM_VALUES].tolist()]
    return f"[{', '.join(shown)}{', ...' if row.numel() > NUM_VALUES else ''}]"


def table_rows(walkthrough: Walkthrough, tokenizer) -> list[tuple[str, str, str, str, str]]:
    """(stage name, title, symbol, shape, values) for every stage; the probabilities row shows the top tokens."""
    rows = []
    for stage in walkthrough.stages:
        values = values_text(stage)
        if stage.name == "probabilities":
            values = ", ".join(f"{token!r} {p:.3f}" for token, p in top_predictions(walkthrough, tokenizer))
            values = f"{walkthrough.predicts}: {values}"
        rows.append((stage.name, stage.title, stage.symbol, shape_text(stage), values))
    return rows


def print_table(rows: list[tuple[str, ...]], walkthrough: Walkthrough):
    sizes = ", ".join(f"{name}={value}" for name, value in walkthrough.sizes.items())
    print(f"Sizes: {sizes}")
    for stack, tokens in walkthrough.tokens.items():
        print(f"{stack} tokens: {tokens}")
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    header = ("stage", "step", "symbol", "shape", "values")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  values")
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4])


# --- the figures --------------------------------------------------------------------------------------------------

def attention_tokens(walkthrough: Walkthrough, stage: Stage) -> tuple[list[str], list[str]]:
    """(query tokens, key tokens) of an attention stage."""
    if "input" in walkthrough.tokens:
        return walkthrough.tokens["input"], walkthrough.tokens["input"]
    own = walkthrough.tokens["source" if stage.stack == "encoder" else "target"]
    return own, walkthrough.tokens["source"] if stage.kind == "cross_attn" else own


def figure_name(stage: Stage) -> str:
    stack = f"{stage.stack}_" if stage.stack else ""
    return f"attention_{stack}layer{stage.layer}_{stage.kind}.png"


def plot_attention(walkthrough: Walkthrough, stage: Stage, path: Path, dpi: int):
    """One heatmap per head of (queries x keys) attention weights, axes labelled with the tokens."""
    import matplotlib.pyplot as plt

    queries, keys = attention_tokens(walkthrough, stage)
    heads = stage.tensor.shape[0]
    columns = min(heads, 4)
    rows = -(-heads // columns)
    cell = 0.28  # inches per token
    width = max(2.2, cell * len(keys) + 1.0)
    height = max(2.2, cell * len(queries) + 1.0)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    for head in range(rows * columns):
        ax = axes[head // columns][head % columns]
        if head >= heads:
            ax.axis("off")
            continue
        image = ax.imshow(stage.tensor[head].float().numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_title(f"head {head + 1}", fontsize=9)
        ax.set_xticks(range(len(keys)), [repr(t)[1:-1] for t in keys], rotation=90, fontsize=7)
        ax.set_yticks(range(len(queries)), [repr(t)[1:-1] for t in queries], fontsize=7)
    where = f"{stage.stack} " if stage.stack else ""
    label = {"self_attn": "self-attention", "masked_self_attn": "masked self-attention",
             "cross_attn": "cross-attention (columns: source)"}[stage.kind]
    rows_are = "; rows: decoder inputs, each predicting the next token" if stage.stack == "decoder" else ""
    fig.suptitle(f"{where}layer {stage.layer}: {label}{rows_are}", fontsize=10)
    fig.tight_layout()
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="attention weight")  # one scale: 0 to 1
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def plot_position_encoding(walkthrough: Walkthrough, stage: Stage, path: Path, dpi: int):
    import matplotlib.pyplot as plt

    tokens = walkthrough.tokens.get("input", walkthrough.tokens.get("source"))
    values = stage.tensor.float().numpy()
    fig, ax = plt.subplots(figsize=(7, max(1.6, 0.25 * len(tokens) + 1.0)))
    image = ax.imshow(values, aspect="auto", cmap="RdBu", vmin=-1.0, vmax=1.0)
    ax.set_yticks(range(len(tokens)), [f"{i} {t!r}" for i, t in enumerate(tokens)], fontsize=7)
    ax.set_xlabel("dimension (even: sin, odd: cos)")
    ax.set_title(f"{stage.title}: PE (n x d_model)", fontsize=10)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def write_figures(walkthrough: Walkthrough, output_dir: Path, dpi: int) -> dict[str, Path]:
    """Stage name -> the figure drawn for it: the first stack's PE, and every attention's weights."""
    import matplotlib

    matplotlib.use("Agg")
    figures = {}
    for stage in walkthrough.stages:
        if stage.name.endswith("embeddings.positions") and "positional_encoding" not in str(figures):
            figures[stage.name] = output_dir / "positional_encoding.png"  # the source's; the target's is the same
            plot_position_encoding(walkthrough, stage, figures[stage.name], dpi)
        elif stage.name.endswith(".weights"):
            figures[stage.name] = output_dir / figure_name(stage)
            plot_attention(walkthrough, stage, figures[stage.name], dpi)
    return figures


# --- the page -----------------------------------------------------------------------------------------------------

def write_html(walkthrough: Walkthrough, rows: list[tuple[str, ...]], figures: dict[str, Path], path: Path,
               model_name: str):
    """One self-contained page: the table in the document's order, each figure (inlined) after the row it draws."""
    section_titles = dict(SECTIONS)
    parts = [f"<h1>Walkthrough of {html.escape(model_name)}</h1>",
             "<p>Sizes: " + ", ".join(f"<b>{k}</b> = {v}" for k, v in walkthrough.sizes.items()) + "</p>"]
    for stack, tokens in walkthrough.tokens.items():
        parts.append(f"<p>{html.escape(stack)} tokens: " + " ".join(
            f"<code>{html.escape(repr(t))}</code>" for t in tokens) + "</p>")
    current = None
    for stage, row in zip(walkthrough.stages, rows, strict=True):
        section = (stage.stack, stage.layer, stage.kind)
        if section != current:
            if current is not None:
                parts.append("</table>")
            where = " ".join(p for p in (stage.stack, None if stage.layer is None else f"layer {stage.layer}") if p)
            title = section_titles.get(stage.kind, stage.kind)
            parts.append(f"<h2>{html.escape(where + ': ' if where else '')}{html.escape(title)}</h2>")
            parts.append("<table><tr><th>stage</th><th>step</th><th>symbol</th><th>shape</th><th>values</th></tr>")
            current = section
        cells = "".join(f"<td>{html.escape(cell)}</td>" for cell in row)
        parts.append(f"<tr>{cells}</tr>")
        if stage.name in figures:
            data = base64.b64encode(figures[stage.name].read_bytes()).decode()
            parts.append(f'<tr><td colspan="5"><img alt="{html.escape(stage.name)}" '
                         f'src="data:image/png;base64,{data}"></td></tr>')
    parts.append("</table>")
    style = ("body{font-family:sans-serif;margin:1.5em;max-width:1400px}"
             "table{border-collapse:collapse;margin-bottom:1em}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px;text-align:left;vertical-align:top}"
             "td:nth-child(3),td:nth-child(5){font-family:monospace}img{max-width:100%}")
    page = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Walkthrough: {html.escape(model_name)}"
            f"</title><style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
    path.write_text(page, encoding="utf-8")


def main(argv: list[str] | None = None) -> Walkthrough:
    args = parse_args(argv)
    started = time.perf_counter()
    model, tokenizer = load_model(args.model, args.trust_remote_code)
    loaded = time.perf_counter()
    walkthrough = trace(model, tokenizer, args.text, args.target)
    check_finite(walkthrough)
    traced = time.perf_counter()
    rows = table_rows(walkthrough, tokenizer)
    print_table(rows, walkthrough)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "walkthrough.tsv").write_text(
        "".join("\t".join(row) + "\n" for row in [("stage", "step", "symbol", "shape", "values"), *rows]),
        encoding="utf-8")
    figures = write_figures(walkthrough, output_dir, args.dpi)
    write_html(walkthrough, rows, figures, output_dir / "walkthrough.html", args.model)
    done = time.perf_counter()
    print(f"Wrote {len(figures)} figures, walkthrough.tsv and walkthrough.html to {output_dir} (load "
          f"{loaded - started:.2f} s, trace {traced - loaded:.2f} s, figures and page {done - traced:.2f} s).")
    return walkthrough


if __name__ == "__main__":
    try:
        with torch.no_grad():
            main()
    except ValueError as error:  # bad input: one line naming the value, not a traceback
        raise SystemExit("error: " + " ".join(str(error).split("\n"))) from None
