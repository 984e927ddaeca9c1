"""`python -m srpo_core bench`: the cost of an SRPO step against a bare hand-written floor.

Session steps and floor steps are interleaved one for one, on the same models and settings, so
both see the same machine load; every figure is a median over the measured steps.
"""

import random
import resource
import statistics
import tempfile
import time
from contextlib import contextmanager

import torch

from . import config, evaluate, srp
from . import direct_align as da
from .events import Failed, SessionFailed, StepMetrics
from .lora import make_optimizer, make_trainable
from .methods import branch_loss
from .models import Models, build
from .schedule import draw, dsigma_cells, floor_timestep, sampling_sigmas, train_sigmas
from .data import kept_prompts, training_prompts
from .session import Session


class Timer:
    def __init__(self, sync):
        self.sync, self.totals = sync, {}

    @contextmanager
    def __call__(self, name):
        self.sync()
        t0 = time.perf_counter()
        yield
        self.sync()
        self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t0


class Floor:
    """The SRPO step written out bare: no session, events, store, config lookups or recipes. Given `models` with the
    session's trained `params` and optimizer, it times the phases of that session's step on the same weights."""

    def __init__(self, cfg: config.RunConfig, models: Models | None = None, params=None, optimizer=None):
        self.cfg = cfg
        self.models = models or build(cfg)
        b = self.models.backend
        self.params = params or make_trainable(b.transformer, cfg, b.lora_targets)
        self.opt = optimizer or make_optimizer(self.params, cfg)
        self.prompts = training_prompts(cfg)
        lo, hi = cfg.train_sigma_range
        self.grid = train_sigmas(lo, hi, cfg.train_grid_len).to(b.device)
        self.cells = dsigma_cells(cfg.train_grid_len, cfg.groundtruth_ratio)
        self.rollout = sampling_sigmas(cfg.rollout_steps, cfg.shift or b.sampling_shift(cfg.resolution)).to(b.device)
        self.shape = b.latent_shape(cfg.resolution)
        self.sync = torch.cuda.synchronize if b.device.type == "cuda" else (lambda: None)

    def step(self, step: int, rng: random.Random) -> dict:
        b, r, cfg = self.models.backend, self.models.reward, self.cfg
        t = Timer(self.sync)
        gen, n = torch.Generator().manual_seed(step), cfg.batch_size
        prompts = [rng.choice(self.prompts) for _ in range(n)]
        pos, neg = srp.pick_words(cfg.pos_words, step), srp.pick_words(cfg.neg_words, step)
        cond = b.encode_prompts(prompts)
        t_pos, t_neg = r.text_features([srp.augment(p, w) for w in (pos, neg) for p in prompts]).to(b.device).split(n)
        v = lambda x, s, g: b.velocity(x, floor_timestep(s) if cfg.floor_timestep else s, cond, g)  # noqa: E731
        eps = torch.randn((n, *self.shape), generator=gen).to(b.device)
        with t("rollout"), torch.no_grad():
            x0 = da.euler_rollout(lambda x, s: v(x, s, cfg.rollout_guidance), eps, self.rollout)
        d = draw(cfg.sigma_draw, n, cfg.train_grid_len, self.cells, gen)
        branches = ((d.hi, d.lo, d.k_d, cfg.k_denoise, (t_pos, t_neg)), (d.b, d.lo_inv, d.k_i, cfg.k_inversion, (t_neg, t_pos)))
        for start, end, k_index, k_bounds, pair in branches:
            start, end = self.grid[start.to(b.device)], self.grid[end.to(b.device)]
            with t("branch_forward"):
                x = da.inject(x0, eps, start)
                x0_hat = da.recover(da.euler_step(x, v(x, start, cfg.train_guidance), start, end), eps, end)
            with t("decode"):
                image = b.decode(x0_hat)
            with t("reward"):
                k = srp.k_at(k_bounds, k_index, cfg.train_grid_len).to(b.device)
                loss = branch_loss(srp.cfg_like(r.image_features(image), *pair, k, r.scale), cfg, 2)
            with t("backward"):
                loss.backward()
        with t("optimizer"):
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        return t.totals


def run(preset: str, steps: int = 12, warmup: int = 2, compile: bool = False) -> dict:
    """With compile=True the session's transformer is torch.compile'd while the floor stays eager, so
    overhead_ratio below 1 is the speed-up compile buys (its compile time falls in the warm-up steps)."""
    cfg = config.load(preset, {"steps": steps + warmup, "preview_every": 0, "checkpoint_every": 0, "method": "srpo"})
    floor = Floor(cfg)
    cfg = cfg.replace(compile_transformer=compile)
    with tempfile.TemporaryDirectory(prefix="srpo-bench-") as scratch:
        session_s, floor_s, splits = _interleaved(Session(cfg, runs_root=scratch, preset=preset), floor, steps, warmup)
    toy_step = statistics.median(session_s)
    floor_step = statistics.median(floor_s)
    result = {"preset": preset, "compiled": compile, "steps_measured": steps, "toy_step_s": toy_step, "floor_step_s": floor_step,
              "overhead_ratio": toy_step / floor_step}
    for key in splits[0]:
        result[f"floor_{key}_s"] = statistics.median(s.get(key, 0.0) for s in splits)
    result.update(_sampling_and_inspector(cfg))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _interleaved(session: Session, floor: Floor, steps: int, warmup: int):
    """Alternate one session step and one floor step; time the session from event to event."""
    rng = random.Random(floor.cfg.seed)
    events = iter(session)
    session_s, floor_s, splits = [], [], []
    last = None
    for step in range(steps + warmup):
        event = next(events)
        while not isinstance(event, StepMetrics):  # Started
            last = time.perf_counter()
            event = next(events)
        now = time.perf_counter()
        t0 = time.perf_counter()
        split = floor.step(step, rng)
        floor_time = time.perf_counter() - t0
        if step >= warmup:
            session_s.append(now - last)
            floor_s.append(floor_time)
            splits.append(split)
        last = time.perf_counter()
    for _ in events:  # let the session finish and write its run directory
        pass
    return session_s, floor_s, splits


def _sampling_and_inspector(cfg: config.RunConfig, batch: int = 8, repeats: int = 3, models: Models | None = None) -> dict:
    sample_cfg = cfg.replace(sample_steps=20) if models is None else cfg
    models = models or evaluate.load_models(sample_cfg)
    prompts = training_prompts(cfg)[:batch]
    evaluate.generate(models, sample_cfg, prompts, 0)  # warm-up
    t0 = time.perf_counter()
    for i in range(repeats):
        images = evaluate.generate(models, sample_cfg, prompts, i)
    throughput = batch * repeats / (time.perf_counter() - t0)
    latencies = []
    for i in range(10):  # new words each time, as when typing: the text features are not cached yet
        t0 = time.perf_counter()
        evaluate.score(models, images[:1], f"{prompts[0]} {'.' * (i + 1)}", cfg.pos_words[0], cfg.neg_words[0])
        latencies.append(time.perf_counter() - t0)
    return {"sample_images_per_s": throughput, "inspector_latency_s": statistics.median(latencies)}


def table(result: dict) -> str:
    width = max(map(len, result))
    return "\n".join(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}" for k, v in result.items())


GB = 1024**3


@contextmanager
def _phase(name: str, out: dict, device: torch.device):
    """Seconds and peak memory of a phase: CUDA's allocated / reserved peaks since the phase began, or on the CPU
    the process's peak resident memory so far."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    yield
    if cuda:
        torch.cuda.synchronize(device)
        out[name] = {"seconds": time.perf_counter() - t0, "peak_allocated_gb": torch.cuda.max_memory_allocated(device) / GB,
                     "peak_reserved_gb": torch.cuda.max_memory_reserved(device) / GB}
    else:
        out[name] = {"seconds": time.perf_counter() - t0,
                     "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}


def run_full(preset: str, steps: int = 3, random_weights: bool = True, memory_cap_gb: float = 0.0,
             overrides: list[str] = ()) -> dict:
    """A preset at full size, measured: its models (random weights from the shipped configurations, or the real
    ones), then the same Session as `train` for one warm-up and `steps` measured steps of one micro-batch each
    (grad_accum 1; a reference-sized update is that times its images), the step's phases timed on the same
    weights, and sampling. `memory_cap_gb` caps this process's CUDA memory (torch's per-process fraction), so a
    "24 GB" preset proves it fits 24 GB on a larger card; on the CPU it has no effect."""
    from .fullsize import build_random
    from .models import pick_device
    cfg = config.load(preset, [*overrides, f"steps={steps + 1}", "grad_accum=1", "preview_every=0", "checkpoint_every=0"])
    device = pick_device(cfg.device)
    result = {"preset": preset, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "random_weights": random_weights, "memory_cap_gb": memory_cap_gb or None, "resolution": cfg.resolution,
              "quantization": cfg.quantization, "optimizer": cfg.optimizer, "date": time.strftime("%Y-%m-%d")}
    if memory_cap_gb and device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, memory_cap_gb * GB / total), device)
    phases: dict[str, dict] = {}
    keep = kept_prompts(cfg, training_prompts(cfg)) if cfg.free_text_encoders else None
    with _phase("loading", phases, device):  # with free_text_encoders: text encoders, prompts cached, then transformer
        models = build_random(cfg, keep) if random_weights else build(cfg, keep)
    with tempfile.TemporaryDirectory(prefix="srpo-bench-") as scratch:
        session = Session(cfg, scratch, preset, models=models)
        events = iter(session)
        with _phase("setup", phases, device):  # LoRA, optimizer, memory estimate (and prompt caching if not done)
            started = next(events)
        if isinstance(started, Failed):
            raise SessionFailed(f"{preset}: {started.error}")
        seconds = []
        with _phase("training", phases, device):
            for event in events:
                if isinstance(event, Failed):
                    raise SessionFailed(f"{preset}: {event.error}")
                if isinstance(event, StepMetrics):
                    seconds.append(event.record.seconds)
    floor, rng = Floor(cfg, models, session.params, session.optimizer), random.Random(cfg.seed)
    splits = [floor.step(i, rng) for i in range(2)][1:]  # the first warms up
    micro = statistics.median(seconds[1:])
    images = cfg.batch_size
    result.update({
        "memory_estimate_gb": started.derived["memory_estimate_gb"], "phases": phases,
        "measured_training_peak_gb": phases["training"].get("peak_allocated_gb"),
        "seconds_per_step": micro, "images_per_step": images, "steps_measured": len(seconds) - 1,
        **{f"step_{k}_s": statistics.median(s.get(k, 0.0) for s in splits) for k in splits[0]},
        # the reference's run: ~20 updates of 32 images; here one micro-batch of batch_size images at a time
        "reference_run_hours": 20 * 32 / images * micro / 3600,
    })
    result.update(_sampling_and_inspector(cfg, batch=1, repeats=1, models=models))
    return result
