"""Tiny random FLUX-family generator and CLIP-style reward, built in code with fixed seeds.

Same classes and on-disk formats as the real models (diffusers FluxTransformer2DModel +
AutoencoderKL, transformers CLIPTextModel / CLIPModel, a tokenizers WordLevel tokenizer), so
every code path that serves FLUX and PickScore/CLIP runs on them in seconds on a CPU.
"""

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from .vocab import MAX_TOKENS, VOCAB

WIDTH = 32


def word_tokenizer() -> PreTrainedTokenizerFast:
    """Offline word-level tokenizer: lowercase, split on spaces and punctuation, append [EOS], pad to 16."""
    tok = Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A [EOS]", special_tokens=[("[EOS]", VOCAB["[EOS]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]",
                                   model_max_length=MAX_TOKENS)


def _text_config() -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=len(VOCAB), hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=1,
                          num_attention_heads=2, max_position_embeddings=MAX_TOKENS, projection_dim=WIDTH,
                          pad_token_id=VOCAB["[PAD]"], eos_token_id=VOCAB["[EOS]"], bos_token_id=VOCAB["[EOS]"])


def generator_parts(seed: int = 0) -> dict:
    """Random tiny FLUX-family components: 32x32 images -> 4x16x16 latents -> 64 tokens."""
    torch.manual_seed(seed)
    return {
        "transformer": FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=WIDTH, pooled_projection_dim=WIDTH,
            guidance_embeds=False, axes_dims_rope=(4, 6, 6)),
        "vae": AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), latent_channels=4,
            layers_per_block=1, norm_num_groups=8, sample_size=32),
        "text_encoder": CLIPTextModel(_text_config()),
        "tokenizer": word_tokenizer(),
    }


def reward_parts(seed: int = 1) -> dict:
    """Random tiny CLIP (transformers CLIPModel, 32x32 input, 8x8 patches) and its tokenizer."""
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=_text_config().to_dict(),
        vision_config=dict(hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8, projection_dim=WIDTH),
        projection_dim=WIDTH)
    return {"model": CLIPModel(config), "tokenizer": word_tokenizer()}
