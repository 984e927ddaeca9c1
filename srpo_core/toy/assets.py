"""Where the built toy world lives (assets/toy, written by `python -m toybuild`) and how its parts load:
a missing or corrupt file is a one-line ConfigError naming the file and the build command that restores it."""

import os
from pathlib import Path

from ..config import ConfigError

SHIPPED = Path(__file__).resolve().parents[2] / "assets" / "toy"
COMMAND = "python -m toybuild --out assets/toy"

# part -> (build stage, files it must hold)
PARTS = {
    "generator": ("generator", ("transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
                                "text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/tokenizer.json")),
    "generator/vae": ("vae", ("config.json", "diffusion_pytorch_model.safetensors")),
    "reward": ("reward", ("config.json", "model.safetensors", "tokenizer.json")),
    "judge": ("judge", ("config.json", "model.safetensors")),
}


def toy_dir() -> Path:
    """The toy world in use: $SRPO_TOY_ASSETS (another build's --out) or the shipped assets/toy."""
    return Path(os.environ.get("SRPO_TOY_ASSETS") or SHIPPED)


def load(part: str, loader, root: Path | None = None):
    """`loader(root / part)`, after checking the part's files; any failure names the file and the rebuild command."""
    root = root or toy_dir()
    for p in [part, "generator/vae"] if part == "generator" else [part]:  # the generator loads its VAE too
        stage, files = PARTS[p]
        missing = next((root / p / f for f in files if not (root / p / f).is_file()), None)
        if missing:
            raise ConfigError(f"toy-world file {missing} is missing; rebuild it with: {COMMAND} --only {stage}.")
    try:
        return loader(root / part)
    except Exception as e:  # safetensors, json and tokenizers raise their own types; all mean a damaged build
        detail = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ConfigError(f"toy-world part {root / part} could not be loaded ({detail}); it is corrupt, rebuild it "
                          f"with: {COMMAND} --only {PARTS[part][0]}.") from None
