"""The toy world's words: the caption grammar `[<Style words>. ]a [<size> ]<color> <shape> on <background>`."""

STYLE_AXES = {
    "lighting": ("bright", "dark"),
    "surface": ("detailed", "smooth"),
    "palette": ("vivid", "muted"),
}
SIZES = ("small", "large")
COLORS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = ("sky", "grass", "sand", "snow")
GLUE = ("a", "on", ".", ",")

WORDS = tuple(w for pair in STYLE_AXES.values() for w in pair) + SIZES + COLORS + SHAPES + BACKGROUNDS + GLUE
# [EOS] is the last id: transformers' CLIPTextTransformer reads eos_token_id == 2 as a legacy config and pools
# at the highest token id instead of at [EOS] (modeling_clip.py), which would hide words from the pooled vector.
VOCAB = {token: i for i, token in enumerate(("[PAD]", "[UNK]") + WORDS + ("[EOS]",))}
MAX_TOKENS = 16


def default_prompts() -> list[str]:
    """One caption per color x shape x background: the built-in training prompts."""
    return [f"a {c} {s} on {b}" for b in BACKGROUNDS for s in SHAPES for c in COLORS]

