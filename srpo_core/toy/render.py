"""The toy world's renderer: 64x64 RGB scenes of one shape on a background, their captions, and the
parser from a caption back to labels.

A scene batch (`Scenes`) holds every random number its image needs, so `render` is a pure, batched
function and a scene is reproducible from its seed. Style axes are continuous values in [-1, 1]
(> 0 leans to the axis' first word): a caption that names a pole draws the value from that half's
outer part (|s| in [0.5, 1]); an unnamed axis draws it anywhere in [-1, 1].
"""

import math
import re
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

from .vocab import BACKGROUNDS, COLORS, GLUE, SHAPES, SIZES, STYLE_AXES

SIZE = 64
# Big enough that the generator learns shape in a 60-minute build (at 10-13 / 14-17 px it needed ~3x the steps:
# docs/toy-build-experiments.md); sample_scenes' margin keeps the widest shape inside the frame
RADII = {"small": (14.0, 17.0), "large": (18.0, 21.0)}
SHAPE_RGB = {"red": (0.86, 0.16, 0.14), "green": (0.14, 0.70, 0.20), "blue": (0.16, 0.32, 0.92),
             "yellow": (0.96, 0.84, 0.16)}
BACKGROUND_RGB = {"sky": (0.58, 0.76, 0.94), "grass": (0.42, 0.60, 0.32), "sand": (0.86, 0.76, 0.56),
                  "snow": (0.92, 0.93, 0.96)}
OUTLINE_PX = 1.5  # a dark rim keeps the outline legible on a background of the shape's own hue (green on grass)
TEXTURE_AMP, PIXEL_NOISE = 0.08, 0.015  # smooth background texture and light pixel noise at style 0
GRATING_AMP, GRATING_PERIOD = 0.14, (8.0, 11.0)  # "detailed": a grating at or above the 4x VAE latent's Nyquist period (8 px)
BLUR_SIGMA = 1.5  # "smooth": blend toward a Gaussian blur
AXES = tuple(STYLE_AXES)  # lighting, surface, palette: the column order of Scenes.style


@dataclass
class Scenes:
    """A batch of B scenes. Label fields index the vocab tuples; `*_named` say what the caption states."""
    shape: torch.Tensor        # (B,) into SHAPES
    color: torch.Tensor        # (B,) into COLORS
    background: torch.Tensor   # (B,) into BACKGROUNDS
    size: torch.Tensor         # (B,) into SIZES
    size_named: torch.Tensor   # (B,) bool
    style_named: torch.Tensor  # (B, 3) -1 unnamed, 0 first word, 1 second word of each axis
    style_u: torch.Tensor      # (B, 3) uniform draws behind the style values
    radius_u: torch.Tensor     # (B,) position of the radius inside its size's range
    center: torch.Tensor       # (B, 2) x, y in pixels
    bg_noise: torch.Tensor     # (B, 1, 8, 8) low-resolution noise behind the smooth background texture
    grating: torch.Tensor      # (B, 3) orientation, phase, period of the "detailed" texture
    pixel_noise: torch.Tensor  # (B, 3, SIZE, SIZE) standard normal

    def __len__(self) -> int:
        return len(self.shape)

    @property
    def style(self) -> torch.Tensor:
        """(B, 3) style values in [-1, 1], columns in AXES order."""
        named = self.style_named
        pole = (1 - 2 * named.clamp(min=0)).float()
        return torch.where(named >= 0, pole * (0.5 + 0.5 * self.style_u), 2 * self.style_u - 1)

    @property
    def radius(self) -> torch.Tensor:
        lo = torch.tensor([RADII[s][0] for s in SIZES])[self.size]
        hi = torch.tensor([RADII[s][1] for s in SIZES])[self.size]
        return lo + (hi - lo) * self.radius_u

    def __getitem__(self, index) -> "Scenes":
        return Scenes(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def sample_scenes(n: int, seed: int, style_rate: float = 0.5, size_rate: float = 0.5) -> Scenes:
    """n random scenes; a caption names style words with probability `style_rate` (then each axis with
    probability 1/2, at least one) and the size with probability `size_rate`."""
    g = torch.Generator().manual_seed(seed)
    pick = lambda k, *shape: torch.randint(k, shape or (n,), generator=g)  # noqa: E731
    shape, color, background, size = pick(len(SHAPES)), pick(len(COLORS)), pick(len(BACKGROUNDS)), pick(len(SIZES))
    size_named = torch.rand(n, generator=g) < size_rate
    styled = torch.rand(n, generator=g) < style_rate
    axes = torch.rand(n, len(AXES), generator=g) < 0.5
    axes[torch.arange(n), pick(len(AXES))] = True
    style_named = torch.where(styled[:, None] & axes, pick(2, n, len(AXES)), -1)
    radius_u, style_u = torch.rand(n, generator=g), torch.rand(n, len(AXES), generator=g)
    margin = 1.15 * RADII["large"][1] + 2  # the widest shape (a large triangle) stays inside the frame
    center = margin + (SIZE - 2 * margin) * torch.rand(n, 2, generator=g)
    grating = torch.stack([math.pi * torch.rand(n, generator=g), 2 * math.pi * torch.rand(n, generator=g),
                           GRATING_PERIOD[0] + (GRATING_PERIOD[1] - GRATING_PERIOD[0]) * torch.rand(n, generator=g)], 1)
    return Scenes(shape, color, background, size, size_named, style_named, style_u, radius_u, center,
                  torch.randn(n, 1, 8, 8, generator=g), grating, torch.randn(n, 3, SIZE, SIZE, generator=g))


def _rgb(table: dict, index: torch.Tensor) -> torch.Tensor:
    return torch.tensor(list(table.values()))[index][:, :, None, None]


def _signed_distance(scenes: Scenes) -> torch.Tensor:
    """(B, SIZE, SIZE) signed distance to the shape's edge in pixels (negative inside)."""
    coords = torch.arange(SIZE) + 0.5
    dx = coords[None, None, :] - scenes.center[:, 0, None, None]
    dy = coords[None, :, None] - scenes.center[:, 1, None, None]
    dx, dy = torch.broadcast_tensors(dx, dy)
    r = scenes.radius[:, None, None]
    circle = torch.hypot(dx, dy) - r
    square = torch.maximum(dx.abs(), dy.abs()) - 0.886 * r  # same area as the circle
    # upright equilateral triangle, circumradius 1.3 r, its bounding box centred on the scene's centre
    big, dy_t = 1.3 * r, dy + 0.325 * r
    edges = torch.stack([dy_t, -0.866 * dx - 0.5 * dy_t, 0.866 * dx - 0.5 * dy_t])
    triangle = edges.amax(0) - big / 2
    kind = scenes.shape[:, None, None]
    return torch.where(kind == 0, circle, torch.where(kind == 1, square, triangle))


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (..., H, W) with reflected borders, as two matmuls (far faster on CPU
    than a depthwise conv)."""
    return _blur_matrix(images.shape[-2], sigma).to(images) @ images @ _blur_matrix(images.shape[-1], sigma).to(images).T


def _blur_matrix(n: int, sigma: float) -> torch.Tensor:
    """(n, n) matrix of a 1-D Gaussian blur whose taps beyond the border reflect back inside."""
    radius = math.ceil(3 * sigma)
    offsets = torch.arange(-radius, radius + 1)
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    source = torch.arange(n)[:, None] + offsets[None, :]
    source = torch.where(source < 0, -source, torch.where(source >= n, 2 * n - 2 - source, source))
    matrix = torch.zeros(n, n).scatter_add_(1, source, taps.expand(n, -1))
    return matrix / matrix.sum(1, keepdim=True)


def luminance(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W), Rec. 601 weights."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)
    return (images * w[:, None, None]).sum(1, keepdim=True)


def smooth(images: torch.Tensor, amount) -> torch.Tensor:
    """The "smooth" pole's operation: blend `amount` (0..1) of the way toward a Gaussian blur."""
    return torch.lerp(images, gaussian_blur(images, BLUR_SIGMA), amount)


def saturate(images: torch.Tensor, palette) -> torch.Tensor:
    """The palette axis' operation (palette in [-1, 1]; > 0 toward vivid): scale chroma around luminance."""
    gray = luminance(images)
    return gray + (images - gray) * (1 + 0.6 * palette)


def render(scenes: Scenes) -> torch.Tensor:
    """Scenes -> images (B, 3, SIZE, SIZE) in [0, 1]."""
    lighting, surface, palette = (scenes.style[:, i, None, None, None] for i in range(3))
    texture = F.interpolate(scenes.bg_noise, size=SIZE, mode="bicubic", align_corners=False)
    image = _rgb(BACKGROUND_RGB, scenes.background) + TEXTURE_AMP * texture
    sd = _signed_distance(scenes)[:, None]
    fill, inner = (0.5 - sd).clamp(0, 1), (0.5 - sd - OUTLINE_PX).clamp(0, 1)
    fill_rgb = _rgb(SHAPE_RGB, scenes.color)
    image = image * (1 - fill) + 0.4 * fill_rgb * (fill - inner) + fill_rgb * inner

    theta, phase, period = (scenes.grating[:, i, None, None, None] for i in range(3))
    coords = torch.arange(SIZE) + 0.5
    wave = torch.sin(2 * math.pi * (coords[None, None, None, :] * theta.cos() + coords[None, None, :, None]
                                    * theta.sin()) / period + phase)
    image = image + GRATING_AMP * surface.clamp(min=0) * wave + PIXEL_NOISE * scenes.pixel_noise
    image = saturate(smooth(image, (-surface).clamp(min=0)), palette)
    # lighting scales every channel, which leaves HSV saturation (max - min) / max alone except where it clips
    image = image * (1 + torch.where(lighting > 0, 0.35, 0.5) * lighting)
    return image.clamp(0, 1)


def captions(scenes: Scenes) -> list[str]:
    """`[<Style words>. ]a [<size> ]<color> <shape> on <background>`, e.g. "Bright, detailed. a small red circle on grass"."""
    out = []
    for i in range(len(scenes)):
        words = [STYLE_AXES[a][int(p)] for a, p in zip(AXES, scenes.style_named[i]) if p >= 0]
        prefix = (", ".join(words) + ". ").capitalize() if words else ""
        size = f"{SIZES[scenes.size[i]]} " if scenes.size_named[i] else ""
        out.append(f"{prefix}a {size}{COLORS[scenes.color[i]]} {SHAPES[scenes.shape[i]]} on {BACKGROUNDS[scenes.background[i]]}")
    return out


@dataclass(frozen=True)
class Labels:
    """What a caption states; None (or no style words) where it says nothing."""
    shape: str | None = None
    color: str | None = None
    background: str | None = None
    size: str | None = None
    style: tuple[str, ...] = ()


_SLOTS = {**{w: "shape" for w in SHAPES}, **{w: "color" for w in COLORS}, **{w: "background" for w in BACKGROUNDS},
          **{w: "size" for w in SIZES}}
_STYLE_AXIS = {w: axis for axis, pair in STYLE_AXES.items() for w in pair}


def parse(caption: str) -> tuple[Labels, list[str]]:
    """Caption -> (labels, words it could not parse). Word order is not enforced; a word outside the
    vocabulary, or a second word for a slot or style axis already filled, is reported, not used."""
    labels, unparsed, axes = {}, [], set()
    for word in re.findall(r"[a-z]+|[^\sa-z]", caption.lower()):
        if word in GLUE:
            continue
        slot = _SLOTS.get(word)
        axis = _STYLE_AXIS.get(word)
        if slot and slot not in labels:
            labels[slot] = word
        elif axis and axis not in axes:
            axes.add(axis)
            labels["style"] = labels.get("style", ()) + (word,)
        else:
            unparsed.append(word)
    return Labels(**labels), unparsed


def scenes_for(labels: list[Labels], seed: int) -> Scenes:
    """Scenes showing what each Labels states, everything unstated drawn at random from `seed`.
    The same seed gives the same geometry and noise whatever the labels, so captions differing in one
    word render as pairs that differ in that attribute only."""
    scenes = sample_scenes(len(labels), seed, style_rate=0.0, size_rate=0.0)
    index = lambda values, key: torch.tensor([values.index(getattr(l, key)) if getattr(l, key) else -1  # noqa: E731
                                              for l in labels], dtype=torch.long)
    changes = {}
    for key, values in (("shape", SHAPES), ("color", COLORS), ("background", BACKGROUNDS), ("size", SIZES)):
        stated = index(values, key)
        changes[key] = torch.where(stated >= 0, stated, getattr(scenes, key))
    named = torch.full((len(labels), len(AXES)), -1, dtype=torch.long)
    for i, l in enumerate(labels):
        for word in l.style:
            axis = _STYLE_AXIS[word]
            named[i, AXES.index(axis)] = STYLE_AXES[axis].index(word)
    return replace(scenes, **changes, size_named=index(SIZES, "size") >= 0, style_named=named)
