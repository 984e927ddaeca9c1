"""The toy models' text side: the word-level tokenizer and the CLIP text-tower config they share."""

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPTextConfig, PreTrainedTokenizerFast

from .vocab import MAX_TOKENS, VOCAB

EOS_ID = VOCAB["[EOS]"]


def toy_tokenizer() -> PreTrainedTokenizerFast:
    """Offline word-level tokenizer over VOCAB: lowercase, split on spaces and punctuation, append
    [EOS], pad to MAX_TOKENS; words outside the vocabulary become [UNK] (reported by srpo_core.tokens)."""
    tok = Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A [EOS]", special_tokens=[("[EOS]", EOS_ID)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]",
                                   model_max_length=MAX_TOKENS)


def text_config(width: int, layers: int, heads: int, projection_dim: int | None = None) -> CLIPTextConfig:
    """A CLIP text tower over VOCAB. Attention is causal, so the [EOS] state (`pooler_output`) is the
    only one that has read the whole caption."""
    return CLIPTextConfig(vocab_size=len(VOCAB), hidden_size=width, intermediate_size=2 * width,
                          num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=MAX_TOKENS,
                          projection_dim=projection_dim or width, pad_token_id=VOCAB["[PAD]"],
                          eos_token_id=EOS_ID, bos_token_id=EOS_ID)
