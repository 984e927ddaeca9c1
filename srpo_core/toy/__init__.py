"""The toy world's definition: vocabulary, tokenizer, renderer and caption parser, the judge's statistics and classifier
inference, and loading the built assets (`python -m toybuild` builds them)."""
