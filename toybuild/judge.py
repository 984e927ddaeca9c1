"""Training the toy world's judge (srpo_core.toy.judge holds its inference): a content classifier on ground-truth
labels of fresh renders, half of each batch VAE reconstructions so it reads decoded images."""

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from srpo_core.toy.judge import ContentClassifier, content_accuracy
from srpo_core.toy.render import Scenes, render, sample_scenes

from .train import cosine_adamw


def targets(scenes: Scenes) -> dict[str, torch.Tensor]:
    return {"shape": scenes.shape, "color": scenes.color, "background": scenes.background}



def train_classifier(model: ContentClassifier, steps: int, seed: int,
                     extra: tuple[torch.Tensor, Scenes] | None = None, batch: int = 64, lr: float = 2e-3,
                     eval_every: int = 100, held_out: int = 256) -> list[dict]:
    """Cross-entropy on fresh renders. `extra` (images and their scenes, e.g. VAE reconstructions of
    renders) fills half of every batch, so the judge reads decoded images as well as renders. Returns the
    accuracy curve on `held_out` held-out renders."""
    optimizer, schedule = cosine_adamw(model.parameters(), lr, steps, warmup=steps // 20, weight_decay=1e-4)
    held_scenes = sample_scenes(held_out, seed + 10**6)
    held_images = render(held_scenes)
    g = torch.Generator().manual_seed(seed)
    curve = []
    bar = tqdm(range(steps), desc="judge", unit="step")
    for step in bar:
        model.train()
        fresh = batch // 2 if extra is not None else batch
        scenes = sample_scenes(fresh, seed + step)
        images, labels = render(scenes), targets(scenes)
        if extra is not None:
            pick = torch.randint(len(extra[0]), (batch - fresh,), generator=g)
            images = torch.cat([images, extra[0][pick]])
            labels = {k: torch.cat([v, targets(extra[1])[k][pick]]) for k, v in labels.items()}
        logits = model(images)
        loss = sum(F.cross_entropy(logits[name], t) for name, t in labels.items())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            acc = content_accuracy(model, held_images, targets(held_scenes))
            curve.append({"step": step + 1, "loss": float(loss.detach()), **acc})
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", **{k: f"{v:.2f}" for k, v in acc.items()})
    model.eval()
    return curve
