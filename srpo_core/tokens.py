"""Which words of a prompt a word-level tokenizer does not know."""


def unknown_words(tokenizer, prompt: str) -> list[str]:
    """Words mapped to the unknown token ([] for subword tokenizers, which know every word)."""
    if tokenizer.unk_token is None or not hasattr(tokenizer, "backend_tokenizer"):
        return []
    words = tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(prompt.lower())
    return [w for w, _ in words if tokenizer.convert_tokens_to_ids(w) == tokenizer.unk_token_id]
