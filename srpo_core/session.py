"""A tuning session: an iterator of typed events with stop().

    session = Session(config.load("tiny", ["steps=5"]), runs_root="runs")
    for event in session:          # Started, StepMetrics..., Preview..., Checkpoint..., Finished | Failed
        ...
"""

import math
import random
import threading
import time
from pathlib import Path

import torch

from . import memory, methods, srp
from .config import ConfigError, RunConfig
from .data import kept_prompts, load_images, training_prompts
from .events import Checkpoint, Event, Failed, Finished, Preview, Started, StepMetrics, StepRecord
from .lora import make_lr_scheduler, make_optimizer, make_trainable, tuned_state_dict
from .models import Models, build, pick_device
from .parallel import Processes
from .store import RunStore, check_writable, save_image


def micro_batch(cfg: RunConfig, prompts: list[str], rng: random.Random, step: int, micro: int,
                rank: int = 0, processes: int = 1) -> methods.MicroBatch:
    """Micro-batch `micro` of optimizer step `step` (counted from 1) on process `rank`: one prompt stream for all
    processes, each taking its own slice of every draw; its own generator for sigma draws, and a noise generator
    seeded alike on every process, so that all inject the same noise as the reference's one broadcast eps."""
    n = cfg.batch_size
    draws = [rng.choice(prompts) for _ in range(n * processes)]
    pos, neg = srp.words_at(cfg.pos_words, cfg.neg_words, srp.parse_schedule(cfg.word_schedule), step)
    return methods.MicroBatch(draws[rank * n:(rank + 1) * n], srp.pick_words(pos, step), srp.pick_words(neg, step),
                              torch.Generator().manual_seed(hash((cfg.seed, step, micro, rank))),
                              torch.Generator().manual_seed(hash((cfg.seed, step, micro))))


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class Session:
    def __init__(self, cfg: RunConfig, runs_root: str | Path = "runs", preset: str = "", models: Models | None = None):
        self.cfg, self.runs_root, self.preset, self.models = cfg, Path(runs_root), preset, models
        self.store: RunStore | None = None  # the main process's run directory
        self.processes: Processes | None = None
        self.ctx: methods.Context | None = None
        self.recipe = methods.RECIPES[cfg.method]
        self.prompts: list[str] = []
        self.params: list[torch.nn.Parameter] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.lr_scheduler = None
        self._stop = threading.Event()
        self._steering = threading.Lock()  # steer() from another thread against a step starting
        self._step_started = 0

    @property
    def is_main_process(self) -> bool:
        """False only on the other processes of a multi-process run, which leave reporting to the main one."""
        return self.processes is None or self.processes.is_main

    def stop(self) -> None:
        """Ask the session to end after the step in progress; the run directory stays valid."""
        self._stop.set()

    def steer(self, pos_words: list[str], neg_words: list[str]) -> int:
        """Change the control words from the next optimizer step on (thread-safe); returns that step. The change is
        added to the run's word_schedule and config.json, so replaying the run reproduces it."""
        pos, neg = ([w.strip() for w in words if w.strip()] for words in (pos_words, neg_words))
        if not (pos and neg) or any(c in w for w in pos + neg for c in "|/:"):
            raise ConfigError("steering needs at least one positive and one negative word, none containing | / or :.")
        if self.processes is not None and self.processes.count > 1:
            raise ConfigError("steering works on single-process sessions; a multi-process run keeps its words.")
        with self._steering:  # entries for a later step leave the step in progress as it started
            step = self._step_started + 1
            entry = f"{step}:{'|'.join(pos)}/{'|'.join(neg)}"
            self.cfg.word_schedule = [e for e in self.cfg.word_schedule if not e.startswith(f"{step}:")] + [entry]
            if self.store:
                self.store.write_config(self.cfg)
        return step

    def __iter__(self):
        try:
            yield from self._run()
        except ConfigError as e:
            yield self._fail(str(e), bad_input=True)
        except torch.OutOfMemoryError:
            yield self._fail("the GPU ran out of memory; the run so far is kept. Try a smaller preset "
                             "(flux-dev-80gb -> flux-dev-24gb), a lower resolution, or gradient_checkpointing=true.")
        except Exception as e:  # a failed run must still end with a readable directory and an event
            yield self._fail(f"{type(e).__name__}: {e}")
        finally:
            if self.processes is not None:
                self.processes.close()

    def _fail(self, message: str, bad_input: bool = False) -> Failed:
        if self.store:
            self.store.set_status("failed", error=message)
        return Failed(message, self.store.dir if self.store else None, bad_input)

    def _run(self):
        cfg = self.cfg
        self._setup()
        self.store = RunStore.create(self.runs_root, cfg, self.preset) if self.processes.is_main else None
        run_dir = self.processes.share(self.store.dir if self.store else None)
        yield Started(run_dir, cfg.to_dict(), self._derived())
        rng, records = random.Random(cfg.seed), []
        for step in range(1, cfg.steps + 1):
            if self.processes.agree_to_stop(self._stop.is_set()):
                break
            with self._steering:  # from here on, steering applies to the step after this one
                self._step_started = step
            records.append(self._step(step, rng))
            if self.store:
                self.store.append_metrics(records[-1])
                self.store.set_status("running", step=step)
            yield StepMetrics(step, cfg.steps, records[-1])
            if records[-1].loss is None:  # diverged: every process sees the same reduced loss and stops here
                yield self._fail(f"loss became NaN at step {step}; lower lr (it is {cfg.lr:g}) or grad_clip.")
                return
            if self._due(cfg.preview_every, step):
                path = self._preview(step)
                if self.store:
                    yield Preview(step, path)
            if self._due(cfg.checkpoint_every, step) and step < cfg.steps:
                path = self._save_weights()
                if self.store:
                    yield Checkpoint(step, path)
        yield from self._finish(run_dir, records)

    def _setup(self) -> None:
        """Everything that can refuse bad input runs before the run directory exists."""
        cfg = self.cfg
        check_writable(self.runs_root)
        self.prompts = training_prompts(cfg)
        images = load_images(cfg.images_dir, cfg.resolution) if cfg.images_dir else None
        torch.manual_seed(cfg.seed)
        self.processes = Processes(cfg, pick_device(cfg.device))
        keep = kept_prompts(cfg, self.prompts) if cfg.free_text_encoders else None
        self.models = self.models or build(cfg, keep)  # built with keep: encoders already dropped before the transformer
        backend = self.models.backend
        if keep and not backend.encode_prompts.frozen:  # models built by the caller
            backend.free_text_encoders(keep)
        self.params = self.processes.prepare(backend, make_trainable(backend.transformer, cfg, backend.lora_targets))
        if cfg.compile_transformer:
            backend.denoiser = torch.compile(backend.denoiser)
        self.optimizer = make_optimizer(self.params, cfg)
        self.lr_scheduler = make_lr_scheduler(self.optimizer, cfg)
        bank = backend.encode_images(images) if images is not None else None
        self.ctx = methods.Context(backend, self.models.reward, cfg, bank, inference_mode=not self.processes.sharded)

    def _derived(self) -> dict:
        """The numbers a run states before its first step (ddpo's habit): batch, step width, size, memory."""
        cfg, procs = self.cfg, self.processes
        derived = {"images_per_step": cfg.batch_size * cfg.grad_accum * procs.count, "processes": procs.count,
                   "micro_batches_per_step": cfg.grad_accum, "dsigma": round(cfg.dsigma, 5),
                   "shift": round(self.ctx.shift, 4),
                   "trainable_params": sum(p.numel() for p in self.params), "prompts": len(self.prompts),
                   "device": str(self.ctx.backend.device), "mixed_precision": procs.accelerator.mixed_precision}
        if cfg.grad_accum > 1:
            derived["accumulation_cost"] = (f"each step runs {cfg.grad_accum} micro-batches in turn: ~{cfg.grad_accum}x "
                                            "the time of one, and no more memory (one micro-batch's graph at a time)")
        derived.update(memory.report(self.models, cfg, self.prompts, derived["trainable_params"],
                                     procs.count if procs.sharded else 1))
        return derived

    def _due(self, every: int, step: int) -> bool:
        """Previews and saves: due every `every` steps, on the processes that take part (the main one; every one
        when sharded, since gathering sharded weights is collective)."""
        return bool(every) and step % every == 0 and (self.store is not None or self.processes.sharded)

    def _step(self, step: int, rng: random.Random) -> StepRecord:
        cfg, procs, t0 = self.cfg, self.processes, time.perf_counter()
        parts: list[tuple[torch.Tensor, ...]] = []
        for micro in range(cfg.grad_accum):
            mb = micro_batch(cfg, self.prompts, rng, step, micro, procs.rank, procs.count)
            with procs.accelerator.autocast():
                for branch in self.recipe(self.ctx, mb):
                    procs.accelerator.backward(branch.loss / cfg.grad_accum)
                    parts.append((branch.reward.float(), branch.srp.float(), branch.sigma.float(),
                                  branch.loss.detach().float().reshape(1) / cfg.grad_accum))
        grad_norm = procs.clip_grad_norm(self.params, cfg.grad_clip)
        lr = self.lr_scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        reward, srp_value, sigma, loss = zip(*parts)
        stats = procs.mean(torch.stack([torch.cat(reward).mean(), torch.cat(srp_value).mean(),
                                        torch.cat(sigma).mean(), torch.cat(loss).sum()])).tolist()
        steered = any(start == step for start, _, _ in srp.parse_schedule(cfg.word_schedule))
        return StepRecord(step, _finite(stats[0]), _finite(stats[1]), stats[2], _finite(stats[3]), grad_norm, lr,
                          round(time.perf_counter() - t0, 4), mb.pos_word, mb.neg_word,
                          procs.replica_spread(self.params), steered)

    def _preview(self, step: int) -> Path | None:
        prompt = self.cfg.preview_prompt or self.prompts[0]
        cond = self.ctx.backend.encode_prompts([prompt])
        with torch.no_grad(), self.processes.accelerator.autocast():
            noise = self.ctx.noise(1, torch.Generator().manual_seed(self.cfg.seed))
            image = self.ctx.backend.decode(methods.sample(self.ctx, cond, noise))[0]
        return save_image(image, self.store.preview_path(step)) if self.store else None

    def _save_weights(self) -> Path | None:
        """The tuned weights into the run directory (a sharded run first gathers them onto the main process)."""
        transformer = self.ctx.backend.transformer
        gathered = self.processes.full_state_dict(transformer)
        if not self.store:
            return None
        return self.store.save_weights(self.ctx.backend, self.cfg, tuned_state_dict(transformer, self.cfg, gathered))

    def _finish(self, run_dir: Path, records: list[StepRecord]):
        cfg, done = self.cfg, len(records)
        summary = {"steps": done, "reward_first": records[0].reward if records else None,
                   "reward_last": records[-1].reward if records else None,
                   "srp_last": records[-1].srp if records else None,
                   "seconds": round(sum(r.seconds for r in records), 3)}
        saved = self._save_weights() if self.store is not None or self.processes.sharded else None
        if self.store:
            yield Checkpoint(done, saved)
            self.store.write_card(cfg, self.preset, summary)
            self.store.set_status("stopped" if done < cfg.steps else "finished", step=done, summary=summary)
        self.processes.end()
        yield Finished(run_dir, summary, done < cfg.steps)


def run(cfg: RunConfig, runs_root: str | Path = "runs", preset: str = "") -> list[Event]:
    """Drive a session to the end and return its events (scripts and tests)."""
    return list(Session(cfg, runs_root, preset))
