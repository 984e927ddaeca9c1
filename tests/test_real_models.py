"""Real-model code paths on tiny random models in the real on-disk formats (`srpo_core fixtures`):
FluxPipeline / StableDiffusion3Pipeline directories, an HPS-format open_clip checkpoint, a PickScore-format
CLIP directory. Loaded through the same code as FLUX.1-dev, SD3.5, HPSv2.1 and PickScore; nothing downloads."""

import json
import math

import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline
from safetensors.torch import load_file, save_file

from srpo_core import config, fixtures, memory, models
from srpo_core.config import ConfigError
from srpo_core.events import Finished, Started
from srpo_core.lora import add_lora, make_trainable, tuned_state_dict
from srpo_core.rewards import AestheticHead, AestheticScorer, OpenClipReward
from srpo_core.session import run

PROMPT = "a red circle on sky"


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return fixtures.write_fixtures(tmp_path_factory.mktemp("fixtures"))


def fixture_cfg(fx, name: str, **changes) -> config.RunConfig:
    return config.load(str(fx[f"preset:{name}"]), {"device": "cpu", **changes})


def test_fixtures_are_in_the_real_layouts(fx):
    for family, cls in (("flux", "FluxPipeline"), ("sd3", "StableDiffusion3Pipeline")):
        assert json.loads((fx[family] / "model_index.json").read_text())["_class_name"] == cls
    assert (fx["flux"] / "text_encoder_2" / "config.json").is_file()
    assert (fx["sd3"] / "text_encoder_3" / "config.json").is_file()
    hps = torch.load(fx["hpsv2.1"], weights_only=True)
    assert set(hps) == {"state_dict"} and "visual.conv1.weight" in hps["state_dict"]
    assert (fx["pickscore"] / "preprocessor_config.json").is_file() and (fx["pickscore"] / "config.json").is_file()
    presets = sorted(p.stem for p in (fx["model"].parent / "presets").glob("*.yaml"))
    assert presets == sorted(f"{b}-{r}" for b in ("flux", "sd3") for r in ("hpsv2.1", "openclip", "pickscore", "clip"))


@pytest.mark.parametrize("name", [f"{b}-{r}" for b in ("flux", "sd3") for r in ("hpsv2.1", "openclip", "pickscore", "clip")])
def test_every_fixture_preset_runs_a_session(fx, name, tmp_path):
    events = run(fixture_cfg(fx, name), tmp_path)
    started, finished = events[0], events[-1]
    assert isinstance(started, Started) and isinstance(finished, Finished), events[-1]
    assert finished.summary["steps"] == 2 and finished.summary["reward_last"] is not None
    assert started.derived["memory_estimate_gb"] == started.derived["memory_breakdown_gb"]["total"] > 0
    saved = load_file(finished.run_dir / "pytorch_lora_weights.safetensors")
    assert saved and all(k.startswith("transformer.") and "lora" in k for k in saved)


def _tuned_backend(fx, family: str):
    cfg = fixture_cfg(fx, f"{family}-clip", lora_alpha=16.0)  # alpha != rank: the scale must survive the file
    built = models.build(cfg)
    params = add_lora(built.backend.transformer, cfg, built.backend.lora_targets)
    torch.manual_seed(3)
    with torch.no_grad():  # B starts at zero; make the adapter change the output
        for p in params:
            p.add_(torch.randn_like(p) * 0.1)
    return cfg, built.backend


@pytest.mark.parametrize("family,pipeline_cls", [("flux", FluxPipeline), ("sd3", StableDiffusion3Pipeline)])
def test_lora_round_trips_through_the_diffusers_pipeline(fx, family, pipeline_cls, tmp_path):
    cfg, backend = _tuned_backend(fx, family)
    path = backend.save_lora(tmp_path, tuned_state_dict(backend.transformer, cfg))
    torch.manual_seed(4)
    x = torch.randn(1, *backend.latent_shape(cfg.resolution))
    sigma, cond = torch.tensor([0.7]), backend.encode_prompts([PROMPT])
    with torch.no_grad():
        tuned = backend.velocity(x, sigma, cond, cfg.train_guidance)
        pipe = pipeline_cls.from_pretrained(fx[family])
        backend.denoiser = pipe.transformer
        base = backend.velocity(x, sigma, cond, cfg.train_guidance)
        pipe.load_lora_weights(str(tmp_path), weight_name=path.name)
        loaded = backend.velocity(x, sigma, cond, cfg.train_guidance)
    assert (base - tuned).abs().max() > 1e-3
    torch.testing.assert_close(loaded, tuned, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family,pipeline_cls", [("flux", FluxPipeline), ("sd3", StableDiffusion3Pipeline)])
def test_full_finetune_folder_loads_into_the_diffusers_pipeline(fx, family, pipeline_cls, tmp_path):
    """A full fine-tune's transformer/ folder is a diffusers model: the pipeline takes it as its transformer."""
    cfg = fixture_cfg(fx, f"{family}-clip", finetune="full")
    backend = models.build(cfg).backend
    torch.manual_seed(5)
    with torch.no_grad():
        for p in make_trainable(backend.transformer, cfg, backend.lora_targets):
            p.add_(torch.randn_like(p) * 0.02)
    folder = backend.save_full(tmp_path / "transformer", tuned_state_dict(backend.transformer, cfg))
    x, sigma, cond = torch.randn(1, *backend.latent_shape(cfg.resolution)), torch.tensor([0.7]), backend.encode_prompts([PROMPT])
    with torch.no_grad():
        tuned = backend.velocity(x, sigma, cond, cfg.train_guidance)
        base = pipeline_cls.from_pretrained(fx[family])
        transformer = type(base.transformer).from_pretrained(folder)
        backend.denoiser = pipeline_cls.from_pretrained(fx[family], transformer=transformer).transformer
        loaded = backend.velocity(x, sigma, cond, cfg.train_guidance)
        backend.denoiser = base.transformer
        untouched = backend.velocity(x, sigma, cond, cfg.train_guidance)
    assert (untouched - tuned).abs().max() > 1e-3
    torch.testing.assert_close(loaded, tuned, rtol=1e-4, atol=1e-5)


def test_sd3_guidance_is_classifier_free(fx):
    _, backend = _tuned_backend(fx, "sd3")
    x, sigma = torch.randn(2, *backend.latent_shape(32)), torch.tensor([0.5, 0.8])
    cond, uncond = backend.encode_prompts([PROMPT, PROMPT]), backend.encode_prompts(["", ""])
    with torch.no_grad():
        v_c, v_u = backend.velocity(x, sigma, cond, 1.0), backend.velocity(x, sigma, uncond, 1.0)
        torch.testing.assert_close(backend.velocity(x, sigma, cond, 4.0), v_u + 4.0 * (v_c - v_u), rtol=1e-4, atol=1e-5)


def test_unsupported_or_mismatched_pipelines_are_refused(fx, tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(ConfigError, match="StableDiffusionXLPipeline.*FluxPipeline.*StableDiffusion3Pipeline"):
        models.build(config.RunConfig(backend="flux", model=str(tmp_path), device="cpu"))
    with pytest.raises(ConfigError, match="set backend=flux"):
        models.build(fixture_cfg(fx, "sd3-clip", model=str(fx["flux"])))


def test_missing_hub_repo_names_the_repo():
    with pytest.raises(ConfigError, match="nobody-here/not-a-model.*local path"):
        models.resolve("nobody-here/not-a-model", "model")


def test_hps_reward_is_a_differentiable_cosine(fx):
    reward = OpenClipReward.from_checkpoint(fx["hpsv2.1"], str(fx["open_clip_arch"]), use_logit_scale=False)
    stored = torch.load(fx["hpsv2.1"], weights_only=True)["state_dict"]
    torch.testing.assert_close(reward.model.state_dict()["visual.conv1.weight"], stored["visual.conv1.weight"])
    assert reward.scale == 1.0
    images = torch.rand(2, 3, 40, 48, requires_grad=True)
    f, t = reward.image_features(images), reward.text_features([PROMPT, "a blue square on sand"])
    torch.testing.assert_close(f.norm(dim=-1), torch.ones(2)) and torch.testing.assert_close(t.norm(dim=-1), torch.ones(2))
    (f * t).sum().backward()
    assert images.grad.abs().sum() > 0


def test_pickle_checkpoint_that_fails_weights_only_is_refused(fx, tmp_path):
    bad = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": {}, "builder": PicklePayload()}, bad)
    with pytest.raises(ConfigError, match="not a safetensors file.*weights_only=True"):
        models.build(fixture_cfg(fx, "flux-hpsv2.1", reward_model=str(bad)))


class PicklePayload:
    """An arbitrary Python object: what a weights_only load must refuse."""


def test_aesthetic_is_a_metric_not_a_training_reward(fx, tmp_path):
    with pytest.raises(ConfigError, match="aesthetic is not text-conditioned"):
        config.RunConfig(reward="aesthetic")
    torch.manual_seed(5)
    save_file(AestheticHead(32).state_dict(), tmp_path / "head.safetensors")
    assert sorted(load_file(tmp_path / "head.safetensors")) == sorted(
        f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))
    clip = OpenClipReward.from_checkpoint(fx["hpsv2.1"], str(fx["open_clip_arch"]))
    scorer = AestheticScorer.from_files(clip, tmp_path / "head.safetensors")
    images = torch.rand(3, 3, 32, 32, requires_grad=True)
    scores = scorer.score(images)
    assert scores.shape == (3,)
    scores.sum().backward()
    assert images.grad.abs().sum() > 0


def test_quantization_needs_cuda(fx):
    with pytest.raises(ConfigError, match="nf4 needs a CUDA GPU"):
        models.build(fixture_cfg(fx, "flux-clip", quantization="nf4"))
    with pytest.raises(ConfigError, match="quantization needs a model loaded"):
        config.RunConfig(quantization="int8")


def test_gradient_checkpointing_gives_the_same_loss(tmp_path):
    def first_step(**changes):
        events = run(config.load("tiny", {"steps": 1, "preview_every": 0, "device": "cpu", **changes}), tmp_path)
        return json.loads((events[-1].run_dir / "metrics.jsonl").read_text().splitlines()[0])
    plain, checkpointed = first_step(), first_step(gradient_checkpointing=True, vae_decode="checkpoint")
    for key in ("loss", "reward", "grad_norm"):
        assert checkpointed[key] == pytest.approx(plain[key], rel=1e-5, abs=1e-7)


def test_freed_text_encoders_serve_only_cached_prompts(fx):
    backend = models.build(fixture_cfg(fx, "flux-clip")).backend
    before = backend.encode_prompts([PROMPT])
    backend.free_text_encoders([PROMPT])
    assert backend.pipe.text_encoder is None and backend.pipe.text_encoder_2 is None
    torch.testing.assert_close(backend.encode_prompts([PROMPT]).embeds, before.embeds)
    with pytest.raises(ConfigError, match="was not encoded before the text encoders were freed"):
        backend.encode_prompts(["a blue square on sand"])


@pytest.mark.parametrize("name", ["flux-clip", "sd3-clip"])
def test_activation_estimate_matches_what_autograd_saves_on_cpu(fx, name):
    cfg = fixture_cfg(fx, name)
    backend = models.build(cfg).backend
    add_lora(backend.transformer, cfg, backend.lora_targets)
    cond = backend.encode_prompts([PROMPT])
    estimated = memory.activation_bytes(backend, cfg, cond, torch.float32)
    x = torch.randn(1, *backend.latent_shape(cfg.resolution))
    v = []
    measured = memory.saved_bytes(lambda: v.append(backend.velocity(x, torch.tensor([0.9]), cond, cfg.train_guidance)))
    assert estimated["transformer"] == measured
    assert estimated["vae_decode"] == memory.saved_bytes(lambda: backend.decode(v[0]))


@pytest.mark.parametrize("preset", ["flux-dev-24gb", "flux-dev-80gb", "sd35-medium-16gb"])
def test_gpu_presets_load_as_configs(preset):
    cfg = config.load(preset)
    assert cfg.backend in ("flux", "sd3") and cfg.model and cfg.reward == "hpsv2.1"
    text = (config.PRESETS_DIR / f"{preset}.yaml").read_text()
    assert "estimated, not measured on GPU" in text


def test_flux_shift_follows_the_scheduler_config_unless_pinned(fx, tmp_path):
    """FLUX.1-dev's scheduler sets use_dynamic_shifting: exp(mu), mu = 0.5 + (1.15 - 0.5) (tokens - 256) / 3840."""
    backend = models.build(fixture_cfg(fx, "flux-clip"), keep_prompts=[PROMPT]).backend
    # free_text_encoders: the prompts were encoded and the encoders dropped while loading, before the transformer
    assert backend.encode_prompts.frozen and backend.text_encoder is None and backend.pipe.text_encoder_2 is None
    # worked by hand for FLUX.1-dev's 8x VAE: 512 px -> 32 x 32 packed tokens, 720 -> 45 x 45, 1024 -> 64 x 64
    backend.vae_scale = 8
    for resolution, shift in ((512, 1.8776), (720, 2.2243), (1024, 3.1582)):
        assert backend.sampling_shift(resolution) == pytest.approx(shift, abs=1e-4)
    events = run(fixture_cfg(fx, "flux-clip", shift=0.0), tmp_path)  # the tiny VAE is 2x: 32 px -> 64 tokens
    assert events[0].derived["shift"] == pytest.approx(math.exp(0.5 + 0.65 * (64 - 256) / 3840), abs=1e-4)
    assert run(fixture_cfg(fx, "flux-clip", shift=3.0), tmp_path)[0].derived["shift"] == 3.0
    assert run(fixture_cfg(fx, "sd3-clip", shift=0.0), tmp_path)[0].derived["shift"] == 3.0  # SD3's fixed shift
