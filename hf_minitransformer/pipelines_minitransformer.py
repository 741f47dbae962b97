"""`pipeline("text2text-generation")` and `pipeline("translation")` for MiniTransformerForSeq2SeqLM.

transformers 5 removed its own text2text-generation and translation pipelines ("use text-generation with a chat
model"), which an encoder-decoder model cannot serve. These two bring them back for this model through transformers'
custom-pipeline mechanism: the seq2seq head lists them in `config.custom_pipelines`, `save_pretrained` copies this
file beside the weights, and `pipeline("translation", model=folder_or_repo_id, trust_remote_code=True)` loads them,
with or without `hf_minitransformer` installed. In-process, build one directly:
`MiniTransformerTranslationPipeline(model=model, tokenizer=tokenizer)`.

This file imports nothing from the package: remote code loads it on its own.
"""

import torch
from transformers import GenerationConfig, Pipeline


class MiniTransformerText2TextGenerationPipeline(Pipeline):
    """Text in, text out: tokenize the source, `generate` (any generation argument passes through), decode."""

    _pipeline_calls_generate = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True
    # Used for what the model's generation config leaves unset; generation usually ends earlier, at the eos token.
    _default_generation_config = GenerationConfig(max_new_tokens=64)
    output_key = "generated_text"

    def _sanitize_parameters(self, truncation: bool | None = None, clean_up_tokenization_spaces: bool | None = None,
                             **generate_kwargs):
        preprocess_params = {} if truncation is None else {"truncation": truncation}
        postprocess_params = {}
        if clean_up_tokenization_spaces is not None:
            postprocess_params["clean_up_tokenization_spaces"] = clean_up_tokenization_spaces
        return preprocess_params, generate_kwargs, postprocess_params

    def preprocess(self, text: str, truncation: bool = False) -> dict[str, torch.Tensor]:
        if not isinstance(text, str):
            raise ValueError(f"{type(self).__name__} takes a string or a list of strings, got {type(text).__name__}.")
        inputs = self.tokenizer(text, truncation=truncation, return_tensors="pt")
        if inputs["input_ids"].shape[1] == 0:
            raise ValueError(f"{type(self).__name__} got {text!r}, which tokenizes to no tokens: there is nothing to "
                             "generate from.")
        return inputs

    def _forward(self, model_inputs: dict[str, torch.Tensor], **generate_kwargs) -> dict[str, torch.Tensor]:
        in_batch = model_inputs["input_ids"].shape[0]
        output_ids = self.model.generate(**model_inputs, **self._prepare_generate_kwargs(generate_kwargs))
        # (inputs, returned sequences per input, length): the pipeline splits the batch along the first dimension.
        return {"output_ids": output_ids.reshape(in_batch, -1, output_ids.shape[-1])}

    def postprocess(self, model_outputs: dict[str, torch.Tensor], clean_up_tokenization_spaces: bool = False
                    ) -> list[dict[str, str]]:
        return [
            {self.output_key: self.tokenizer.decode(
                ids, skip_special_tokens=True, clean_up_tokenization_spaces=clean_up_tokenization_spaces
            )}
            for ids in model_outputs["output_ids"][0]
        ]


class MiniTransformerTranslationPipeline(MiniTransformerText2TextGenerationPipeline):
    """The same, answering with "translation_text", as transformers' translation pipeline did."""

    output_key = "translation_text"


# What the seq2seq head writes into `config.custom_pipelines`: the task name, this file's class, the Auto class.
CUSTOM_PIPELINES = {
    "text2text-generation": {
        "impl": "pipelines_minitransformer.MiniTransformerText2TextGenerationPipeline",
        "pt": ["AutoModelForSeq2SeqLM"],
        "type": "text",
    },
    "translation": {
        "impl": "pipelines_minitransformer.MiniTransformerTranslationPipeline",
        "pt": ["AutoModelForSeq2SeqLM"],
        "type": "text",
    },
}
