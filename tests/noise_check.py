"""Run by tests/test_reference.py under `accelerate launch` (2 processes): build two steps' micro-batches as a
session does and report how far the injected noise differs between the processes."""

import json
import random

import torch
from accelerate import Accelerator

from srpo_core import config, methods
from srpo_core.models import build
from srpo_core.schedule import draw
from srpo_core.session import micro_batch

acc = Accelerator(cpu=True)
cfg = config.load("tiny", ["batch_size=2", "prompts=a red circle on sky,a blue square on grass,a green triangle on sand"])
models = build(cfg)
ctx = methods.Context(models.backend, models.reward, cfg)
rng = random.Random(cfg.seed)
spread, prompts, draws = 0.0, [], []
for step in (1, 2):
    mb = micro_batch(cfg, cfg.prompts, rng, step, 0, acc.process_index, acc.num_processes)
    _, eps = methods.clean_and_noise(ctx, mb, models.backend.encode_prompts(mb.prompts))
    gathered = acc.gather(eps.flatten().unsqueeze(0))
    spread = max(spread, float((gathered.max(0).values - gathered.min(0).values).abs().max()))
    prompts.append(mb.prompts)
    draws.append(draw(cfg.sigma_draw, 2, cfg.train_grid_len, ctx.cells, mb.gen).k_d.tolist())
every = [None, None]
torch.distributed.all_gather_object(every, (prompts, draws))
if acc.is_main_process:
    print(json.dumps({"noise_spread": spread, "prompts_differ": every[0][0] != every[1][0],
                      "sigma_draws_differ": every[0][1] != every[1][1]}))
acc.end_training()
