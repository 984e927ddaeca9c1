"""Training the toy reward "toy-hps": a tiny transformers CLIPModel trained contrastively on (render, caption), then
given a known bias, as HPS has one: for the same content and caption it prefers vivid + smooth renders.

The bias is graded, not a pole-against-pole preference: of two renders of one scene, the plain caption
must score higher the one whose palette - surface value is higher, by BIAS_SLOPE per unit of the
difference. A first build taught only vivid + smooth against muted + detailed renders (margin 0.05);
it held the bias on those pairs (99%) yet lowered its score for every small step toward vivid or
smooth from a generated image (measured: x1.2 saturation -0.017, a 1 px blur -0.010), so reward
gradients never pulled Direct-Align toward the bias. The bias is taught on captions without style
words, so it lives in the prompt-independent part of the image features (what every caption's text
feature shares); style words keep their own meaning, which is what lets SRP's r(x, p+) - r(x, p-)
cancel the bias. Features come from srpo_core's own ClipReward code (`rewards.clip.image_features` /
`text_features`, the same preprocessing), scored as ClipReward does with use_logit_scale=False: the cosine of
L2-normalized features.
"""

from dataclasses import replace

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPModel

from srpo_core.rewards.clip import image_features, text_features
from srpo_core.toy.render import AXES, SIZE, Scenes, captions, render, sample_scenes, saturate, smooth
from srpo_core.toy.text import text_config
from srpo_core.toy.vocab import STYLE_AXES

from .train import cosine_adamw

WIDTH, PROJECTION = 128, 64
BIAS = {"palette": "vivid", "surface": "smooth"}  # what the reward prefers for identical content
ANTI_BIAS = {"palette": "muted", "surface": "detailed"}
BIAS_SLOPE = 0.04  # cosine margin per unit of palette - surface (style values in [-1, 1]): 0.16 pole to pole
BIAS_WEIGHT = 10.0  # the hinge's weight beside the contrastive loss (at 1 it learned the poles but not the grades)


def make_reward(seed: int) -> CLIPModel:
    """ViT (64 px, 8 px patches, 3 layers x 128) + CLIP text tower (2 layers x 128), 64-d joint space."""
    torch.manual_seed(seed)
    vision = dict(hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=3, num_attention_heads=4,
                  image_size=SIZE, patch_size=8, projection_dim=PROJECTION)
    return CLIPModel(CLIPConfig(text_config=text_config(WIDTH, 2, 4, PROJECTION).to_dict(), vision_config=vision,
                                projection_dim=PROJECTION))


def with_style(scenes: Scenes, words: dict[str, str]) -> Scenes:
    """The same scenes with the given axes named (and so rendered) at the given poles."""
    named = scenes.style_named.clone()
    for axis, word in words.items():
        named[:, AXES.index(axis)] = STYLE_AXES[axis].index(word)
    return replace(scenes, style_named=named)


def contrastive_loss(model: CLIPModel, f: torch.Tensor, t: torch.Tensor, texts: list[str]) -> torch.Tensor:
    """Symmetric InfoNCE whose targets spread over every caption identical to the image's own (a batch
    repeats captions, and those are not negatives)."""
    same = torch.tensor([[a == b for b in texts] for a in texts], dtype=torch.float)
    targets = same / same.sum(1, keepdim=True)
    logits = model.logit_scale.exp() * f @ t.T
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def restyled(scenes: Scenes, seed: int) -> Scenes:
    """The same scenes (content, position, textures) with fresh random palette and surface values."""
    style_u = scenes.style_u.clone()
    cols = [AXES.index(axis) for axis in BIAS]
    style_u[:, cols] = torch.rand(len(scenes), len(cols), generator=torch.Generator().manual_seed(seed))
    return replace(scenes, style_u=style_u)


def bias_score(scenes: Scenes) -> torch.Tensor:
    """(B,) how far toward the liked poles a render is: palette - surface, in [-2, 2]."""
    return scenes.style[:, AXES.index("palette")] - scenes.style[:, AXES.index("surface")]


def edited(images: torch.Tensor, seed: int, reach: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """The renderer's own surface and palette operations applied after the fact, a random amount in
    [-reach, reach] each (a negative smooth sharpens): (edited images, their bias_score change)."""
    g = torch.Generator().manual_seed(seed)
    blur, chroma = ((torch.rand(len(images), generator=g) * 2 - 1) * reach for _ in range(2))
    out = saturate(smooth(images, blur[:, None, None, None]), chroma[:, None, None, None]).clamp(0, 1)
    return out, blur + chroma


def bias_loss(model: CLIPModel, tokenizer, scenes: Scenes, seed: int) -> torch.Tensor:
    """Graded hinge on pairs of identical content: the plain caption must score the twin with the higher
    bias_score above the other by BIAS_SLOPE times the scores' difference. Half the twins are re-rendered
    with fresh palette and surface values, half are the render edited after the fact, so the preference
    follows the image's look (as on a generator's own images), not only the renderer's parameters."""
    images, half = render(scenes), len(scenes) // 2
    other = restyled(scenes[:half], seed)
    twin_edit, diff_edit = edited(images[half:], seed)
    twin = torch.cat([render(other), twin_edit])
    diff = torch.cat([bias_score(scenes[:half]) - bias_score(other), -diff_edit])
    t = text_features(model, tokenizer, captions(scenes))
    gap = (image_features(model, images) * t).sum(-1) - (image_features(model, twin) * t).sum(-1)
    return F.relu(BIAS_SLOPE * diff.abs() - diff.sign() * gap).mean()


def train_reward(model: CLIPModel, tokenizer, steps: int, seed: int, batch: int = 128, lr: float = 1e-3,
                 bias_from: float = 0.4, eval_every: int = 200, eval_images: int = 256) -> list[dict]:
    """Contrastive training on captions that name style words in 80% of cases (so the words get learned);
    from `bias_from` of the steps on, the graded bias hinge joins on half a batch of caption-only scenes."""
    optimizer, schedule = cosine_adamw(model.parameters(), lr, steps, warmup=steps // 20, weight_decay=0.05)
    curve = []
    bar = tqdm(range(steps), desc="reward", unit="step")
    for step in bar:
        model.train()
        scenes = sample_scenes(batch, seed + step, style_rate=0.8)
        texts = captions(scenes)
        loss = contrastive_loss(model, image_features(model, render(scenes)), text_features(model, tokenizer, texts), texts)
        if step >= bias_from * steps:
            loss = loss + BIAS_WEIGHT * bias_loss(model, tokenizer, sample_scenes(batch // 2, seed + 10**7 + step, style_rate=0.0),
                                    seed + 2 * 10**7 + step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            metrics = reward_metrics(model, tokenizer, seed + 10**6, eval_images)
            curve.append({"step": step + 1, "loss": float(loss.detach()), **metrics})
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", r32=f"{metrics['retrieval_at_32']:.2f}",
                            bias=f"{metrics['bias_rate']:.2f}")
    model.eval()
    return curve


@torch.no_grad()
def reward_metrics(model: CLIPModel, tokenizer, seed: int, n: int = 256) -> dict[str, float]:
    """On held-out renders: image-to-caption top-1 retrieval among 32 candidates; per style axis, how often
    sign(r(x, "<A>. p") - r(x, "<B>. p")) matches the rendered pole (renders with |style| >= 0.5); how
    often the plain reward prefers the vivid + smooth render of identical content to the muted + detailed one
    (bias_rate), and the render with the higher bias_score among random restyled twins (bias_graded_rate,
    pairs whose scores differ by >= 0.5) and the render edited after the fact toward or away from the bias
    (bias_edit_rate, edits that move the score by >= 0.25)."""
    model.eval()
    scenes = sample_scenes(n, seed)
    texts = captions(scenes)
    f = image_features(model, render(scenes))
    t = text_features(model, tokenizer, texts)
    hits = [texts[g + int((f[g + i] @ t[g:g + 32].T).argmax())] == texts[g + i]
            for g in range(0, n - 31, 32) for i in range(32)]
    out = {"retrieval_at_32": sum(hits) / len(hits)}
    plain = sample_scenes(n, seed + 1, style_rate=0.0)
    p = captions(plain)
    plain_images = render(plain)
    f = image_features(model, plain_images)
    for i, (axis, (a, b)) in enumerate(STYLE_AXES.items()):
        margin = (f * (text_features(model, tokenizer, [f"{a.capitalize()}. {c}" for c in p])
                       - text_features(model, tokenizer, [f"{b.capitalize()}. {c}" for c in p]))).sum(-1)
        style = plain.style[:, i]
        clear = style.abs() >= 0.5
        out[f"{axis}_sign_agreement"] = float(((margin > 0) == (style > 0))[clear].float().mean())
    t = text_features(model, tokenizer, p)
    liked = (image_features(model, render(with_style(plain, BIAS))) * t).sum(-1)
    other = (image_features(model, render(with_style(plain, ANTI_BIAS))) * t).sum(-1)
    out["bias_rate"] = float((liked > other).float().mean())
    out["bias_margin"] = float((liked - other).mean())
    twin = restyled(plain, seed + 2)
    diff = bias_score(plain) - bias_score(twin)
    gap = (f * t).sum(-1) - (image_features(model, render(twin)) * t).sum(-1)
    out["bias_graded_rate"] = float(((gap > 0) == (diff > 0))[diff.abs() >= 0.5].float().mean())
    twin, diff = edited(plain_images, seed + 3)
    gap = (image_features(model, twin) * t).sum(-1) - (f * t).sum(-1)
    out["bias_edit_rate"] = float(((gap > 0) == (diff > 0))[diff.abs() >= 0.25].float().mean())
    return out
