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
    """One caption per color x shape x background (48): the tiny models' built-in prompts."""
    return [f"a {c} {s} on {b}" for b in BACKGROUNDS for s in SHAPES for c in COLORS]


def _held_out(i: int) -> bool:
    """Every fourth combination, staggered so each shape, color and background keeps training prompts."""
    b, rest = divmod(i, len(SHAPES) * len(COLORS))
    return (rest + b) % 4 == 0


def train_prompts() -> list[str]:
    """The toy world's 36 tuning prompts: default_prompts() minus heldout_prompts()."""
    return [p for i, p in enumerate(default_prompts()) if not _held_out(i)]


def heldout_prompts() -> list[str]:
    """12 combinations no toy preset tunes on (each shape 4x, each color and background 3x): evaluation prompts."""
    return [p for i, p in enumerate(default_prompts()) if _held_out(i)]

