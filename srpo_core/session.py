"""A tuning session: an iterator of typed events with stop().

    session = Session(config.load("tiny", ["steps=5"]), runs_root="runs")
    for event in session:          # Started, StepMetrics..., Preview..., Checkpoint..., Finished | Failed
        ...
"""

import math
import os
import random
import tempfile
import threading
import time
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import DistributedType, broadcast_object_list, parse_flag_from_env
from PIL import Image
from torch.distributed.tensor import DTensor

from . import memory, methods, sharding, srp
from .config import ConfigError, RunConfig
from .events import Checkpoint, Event, Failed, Finished, Preview, Started, StepMetrics
from .lora import make_lr_scheduler, make_optimizer, make_trainable, tuned_state_dict
from .models import Models, build, pick_device
from .store import RunStore, check_writable, from_pil, save_image
from .toy.vocab import default_prompts, train_prompts

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def read_prompts_file(path: str | Path) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"prompts file {path} is not UTF-8 text; save it as UTF-8, one prompt a line.") from None
    except OSError as e:
        raise ConfigError(f"cannot read prompts file {path} ({e.strerror}).") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ConfigError(f"prompts file {path} has no prompts; write one prompt a line.")
    return prompts


def training_prompts(cfg: RunConfig) -> list[str]:
    if cfg.prompts_file:
        return read_prompts_file(cfg.prompts_file)
    return cfg.prompts or (train_prompts() if cfg.backend == "toy" else default_prompts())


def load_images(folder: str | Path, resolution: int) -> torch.Tensor:
    """Every image in a folder, center-cropped and resized to resolution: (N, 3, R, R) in [0, 1]."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"images_dir {folder} is not a folder.")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"images_dir {folder} holds no images (allowed: {', '.join(sorted(IMAGE_SUFFIXES))}).")
    return torch.stack([from_pil(Image.open(p), resolution) for p in files])


class Session:
    def __init__(self, cfg: RunConfig, runs_root: str | Path = "runs", preset: str = "", models: Models | None = None):
        self.cfg, self.runs_root, self.preset = cfg, Path(runs_root), preset
        self.models = models
        self.store: RunStore | None = None
        self.accelerator: Accelerator | None = None
        self._stop = threading.Event()

    @property
    def is_main_process(self) -> bool:
        """False only on the other processes of a multi-process run, which leave reporting to the main one."""
        return self.accelerator is None or self.accelerator.is_main_process

    def stop(self) -> None:
        """Ask the session to end after the step in progress; the run directory stays valid."""
        self._stop.set()

    def __iter__(self):
        try:
            yield from self._run()
        except ConfigError as e:
            yield self._fail(str(e))
        except torch.OutOfMemoryError:
            yield self._fail("the GPU ran out of memory; the run so far is kept. Try a smaller preset "
                             "(flux-dev-80gb -> flux-dev-24gb), a lower resolution, or gradient_checkpointing=true.")
        except Exception as e:  # a failed run must still end with a readable directory and an event
            yield self._fail(f"{type(e).__name__}: {e}")
        finally:
            if self.accelerator is not None and self.accelerator.num_processes > 1:
                # Left to interpreter shutdown, gloo's worker threads can abort the exiting process (SIGABRT,
                # "terminate called without an active exception"); destroying the process group first avoids it.
                self.accelerator.end_training()

    def _fail(self, message: str) -> Failed:
        if self.store:
            self.store.set_status("failed", error=message)
        return Failed(message, self.store.dir if self.store else None)

    def _setup(self):
        """Everything that can refuse bad input runs before the run directory exists."""
        cfg = self.cfg
        check_writable(self.runs_root)
        prompts = training_prompts(cfg)
        images = load_images(cfg.images_dir, cfg.resolution) if cfg.images_dir else None
        torch.manual_seed(cfg.seed)
        device = pick_device(cfg.device)
        mp = cfg.mixed_precision if cfg.mixed_precision != "auto" else ("bf16" if device.type == "cuda" else "no")
        # Under `accelerate launch` this joins the process group (DDP on GPUs, gloo on CPUs) and selects
        # this process's GPU, so the models built next land on it.
        acc = self.accelerator = Accelerator(mixed_precision=mp, cpu=device.type == "cpu",
                                             kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])
        accelerate_fsdp = acc.distributed_type == DistributedType.FSDP  # an FSDP accelerate config, on GPUs
        # accelerate ignores an FSDP config on CPU processes (see sharding.py); srpo_core shards them itself
        shard = acc.num_processes > 1 and (cfg.shard or parse_flag_from_env("ACCELERATE_USE_FSDP"))
        if (shard or accelerate_fsdp) and cfg.method == "refl":
            raise ConfigError("sharded training cannot run method refl: ReFL stops each process's rollout at a step of "
                              "its own, while sharded forwards run in lockstep; use srpo, direct-align or draft.")
        self.models = self.models or build(cfg)
        backend = self.models.backend
        if cfg.free_text_encoders:
            backend.free_text_encoders(prompts + [cfg.preview_prompt or prompts[0]])
        self.params = make_trainable(backend.transformer, cfg, backend.lora_targets)
        if shard and not accelerate_fsdp:
            sharding.shard(backend.transformer, acc.device)
        elif acc.num_processes > 1:
            # DDP, or accelerate's FSDP plugin when its config asks for it. DDP's no-grad rollouts and previews make
            # no collective calls (no buffer broadcast), so the main process alone may render previews.
            backend.denoiser = acc.prepare_model(backend.transformer)
        # Sharded forwards and weight gathers are collective: every process takes part in previews and saves.
        self.sharded = sharding.is_sharded(backend.transformer)
        if self.sharded:
            self.params = [p for p in backend.transformer.parameters() if p.requires_grad]  # now DTensor shards
        if cfg.compile_transformer:
            backend.denoiser = torch.compile(backend.denoiser)
        self.optimizer = make_optimizer(self.params, cfg)
        self.lr_scheduler = make_lr_scheduler(self.optimizer, cfg)
        bank = backend.encode_images(images) if images is not None else None
        self.ctx = methods.Context(backend, self.models.reward, cfg, bank, inference_mode=not self.sharded)
        self.recipe = methods.RECIPES[cfg.method]
        self.prompts = prompts

    def _run(self):
        cfg = self.cfg
        self._setup()
        acc = self.accelerator
        if acc.is_main_process:  # one run directory, written by the main process only
            self.store = RunStore.create(self.runs_root, cfg, self.preset)
        run_dir = broadcast_object_list([self.store.dir if self.store else None])[0] if acc.num_processes > 1 else self.store.dir
        derived = {"images_per_step": cfg.batch_size * cfg.grad_accum * acc.num_processes, "processes": acc.num_processes,
                   "dsigma": round(cfg.dsigma, 5), "trainable_params": sum(p.numel() for p in self.params),
                   "prompts": len(self.prompts), "device": str(self.ctx.backend.device), "mixed_precision": acc.mixed_precision}
        derived.update(memory.report(self.models, cfg, self.prompts, derived["trainable_params"],
                                     acc.num_processes if self.sharded else 1))
        yield Started(run_dir, cfg.to_dict(), derived)
        rng = random.Random(cfg.seed)
        rows: list[dict] = []
        joins = self.store is not None or self.sharded  # this process takes part in previews and saves
        for step in range(1, cfg.steps + 1):
            if self._stop_requested():
                break
            rows.append(self._step(step, rng))
            if self.store:
                self.store.append_metrics(rows[-1])
                self.store.set_status("running", step=step)
            yield StepMetrics(step, cfg.steps, rows[-1])
            if joins and cfg.preview_every and step % cfg.preview_every == 0:
                preview = self._preview(step)
                if self.store:
                    yield Preview(step, preview)
            if joins and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                saved = self._save_weights()
                if self.store:
                    yield Checkpoint(step, saved)
        done = len(rows)
        summary = {"steps": done, "reward_first": rows[0]["reward"] if rows else None,
                   "reward_last": rows[-1]["reward"] if rows else None, "srp_last": rows[-1]["srp"] if rows else None,
                   "seconds": round(sum(r["seconds"] for r in rows), 3)}
        saved = self._save_weights() if joins else None
        if self.store:
            yield Checkpoint(done, saved)
            self.store.write_card(cfg, self.preset, summary)
            self.store.set_status("stopped" if done < cfg.steps else "finished", step=done, summary=summary)
        acc.wait_for_everyone()
        yield Finished(run_dir, summary, done < cfg.steps)

    def _stop_requested(self) -> bool:
        if self.accelerator.num_processes == 1:
            return self._stop.is_set()
        flag = torch.tensor([float(self._stop.is_set())], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, "sum") > 0)  # every process stops at the same step

    def _step(self, step: int, rng: random.Random) -> dict:
        cfg, acc, t0 = self.cfg, self.accelerator, time.perf_counter()
        rank, n = acc.process_index, cfg.batch_size
        totals: dict[str, list[torch.Tensor]] = {"reward": [], "srp": [], "sigma": [], "loss": []}
        for micro in range(cfg.grad_accum):
            # One prompt stream for all processes, each taking its own slice of every draw.
            draws = [rng.choice(self.prompts) for _ in range(n * acc.num_processes)]
            gen = torch.Generator().manual_seed(hash((cfg.seed, step, micro, rank)))
            mb = methods.MicroBatch(draws[rank * n:(rank + 1) * n], srp.pick_words(cfg.pos_words, step - 1),
                                    srp.pick_words(cfg.neg_words, step - 1), gen)
            with acc.autocast():
                for branch in self.recipe(self.ctx, mb):
                    acc.backward(branch.loss / cfg.grad_accum)
                    for key in ("reward", "srp", "sigma"):
                        totals[key].append(getattr(branch, key).detach().float())
                    totals["loss"].append(branch.loss.detach().float().reshape(1) / cfg.grad_accum)
        grad_norm = acc.clip_grad_norm_(self.params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        if isinstance(grad_norm, DTensor):
            grad_norm = grad_norm.full_tensor()
        lr = self.lr_scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        stats = torch.stack([torch.cat(totals["reward"]).mean(), torch.cat(totals["srp"]).mean(),
                             torch.cat(totals["sigma"]).mean(), torch.cat(totals["loss"]).sum()])
        row = {"step": step}
        if acc.num_processes > 1:
            stats = acc.reduce(stats, "mean")
            if not self.sharded:  # sharded weights have one copy, spread over the processes: nothing to compare
                row["replica_spread"] = self._replica_spread()
        for key, value in zip(("reward", "srp", "sigma", "loss"), stats.tolist()):
            row[key] = None if math.isnan(value) else value
        return {**row, "grad_norm": float(grad_norm), "lr": lr, "seconds": round(time.perf_counter() - t0, 4)}

    def _replica_spread(self) -> float:
        """Largest difference between processes of a fingerprint of the LoRA weights (0 = in sync)."""
        flat = torch.cat([p.detach().double().flatten() for p in self.params])
        fingerprint = torch.stack([flat.sum(), flat.square().sum(), flat[::7].sum()]).unsqueeze(0)
        gathered = self.accelerator.gather(fingerprint)
        return float((gathered.max(0).values - gathered.min(0).values).max())

    def _preview(self, step: int) -> Path | None:
        prompt = self.cfg.preview_prompt or self.prompts[0]
        gen = torch.Generator().manual_seed(self.cfg.seed)
        cond = self.ctx.backend.encode_prompts([prompt])
        with torch.no_grad(), self.accelerator.autocast():
            image = self.ctx.backend.decode(methods.sample(self.ctx, cond, self.ctx.noise(1, gen)))[0]
        return save_image(image, self.store.preview_path(step)) if self.store else None

    def _save_weights(self) -> Path | None:
        """Write the tuned weights (LoRA file or transformer/ folder) in a scratch folder, then rename them into
        place, so they are never half-written; a sharded run first gathers them onto the main process."""
        backend, cfg = self.ctx.backend, self.cfg
        gathered = sharding.full_state_dict(backend.transformer) if self.sharded else None
        if not self.store:
            return None
        state, target = tuned_state_dict(backend.transformer, cfg, gathered), self.store.weights_path(cfg)
        with tempfile.TemporaryDirectory(dir=self.store.dir, prefix=".weights-") as scratch:
            if cfg.finetune == "lora":
                os.replace(backend.save_lora(Path(scratch), state), target)
            else:
                written = backend.save_full(Path(scratch) / "new", state)
                if target.exists():  # a folder cannot be replaced in one rename: the old one leaves with the scratch
                    os.replace(target, Path(scratch) / "old")
                os.replace(written, target)
        return target


def run(cfg: RunConfig, runs_root: str | Path = "runs", preset: str = "") -> list[Event]:
    """Drive a session to the end and return its events (scripts and tests)."""
    return list(Session(cfg, runs_root, preset))
