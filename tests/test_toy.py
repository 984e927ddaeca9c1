"""The toy world: renderer, caption grammar, judge statistics, the build's on-disk layouts and its one code path."""

import pytest
import torch

from srpo_core import config, evaluate
from srpo_core.backends import FluxBackend
from srpo_core.rewards import ClipReward
from srpo_core.toy.judge import RANGES, ContentClassifier, raw_brightness, raw_detail, raw_saturation, style_stats
from srpo_core.toy.render import AXES, Labels, captions, parse, render, sample_scenes, scenes_for
from srpo_core.toy import assets
from srpo_core.toy.text import EOS_ID, toy_tokenizer
from srpo_core.toy.vocab import BACKGROUNDS, COLORS, SHAPES, STYLE_AXES, default_prompts
from toybuild import generator as gen
from toybuild.build import Plan, build


def test_render_is_deterministic_by_seed():
    a, b, c = render(sample_scenes(8, 3)), render(sample_scenes(8, 3)), render(sample_scenes(8, 4))
    assert a.shape == (8, 3, 64, 64) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_caption_round_trip():
    scenes = sample_scenes(200, 0)
    texts = captions(scenes)
    assert any(t[0].isupper() and ". a " in t for t in texts) and any(t.startswith("a ") for t in texts)
    for i, text in enumerate(texts):
        labels, unparsed = parse(text)
        assert unparsed == []
        assert (labels.shape, labels.color, labels.background) == (
            SHAPES[scenes.shape[i]], COLORS[scenes.color[i]], BACKGROUNDS[scenes.background[i]])
        again = scenes_for([labels], seed=i)
        assert captions(again) == [text]


def test_style_words_in_about_half_the_captions():
    texts = captions(sample_scenes(1000, 1))
    assert 0.4 < sum("." in t for t in texts) / len(texts) < 0.6


def test_parse_reports_what_it_cannot_read():
    labels, unparsed = parse("Bright, shiny. a red blue circle on the moon")
    assert labels == Labels(shape="circle", color="red", style=("bright",))
    assert unparsed == ["shiny", "blue", "the", "moon"]


@pytest.mark.parametrize("axis", AXES)
def test_style_words_move_their_statistic(axis):
    """Same seed, same content, opposite pole words: the axis' statistic orders every pair."""
    stat = {"lighting": "brightness", "surface": "detail", "palette": "saturation"}[axis]
    first, second = STYLE_AXES[axis]
    prompts = default_prompts()
    a = style_stats(render(scenes_for([parse(f"{first}. {p}")[0] for p in prompts], 7)))
    b = style_stats(render(scenes_for([parse(f"{second}. {p}")[0] for p in prompts], 7)))
    assert (a[stat] > b[stat]).float().mean() >= 0.95


def test_statistics_span_the_unit_interval():
    images = render(sample_scenes(512, 11))
    for name, raw in (("brightness", raw_brightness), ("saturation", raw_saturation), ("detail", raw_detail)):
        lo, hi = RANGES[name]
        values = raw(images)
        assert ((values < lo) | (values > hi)).float().mean() < 0.03, name  # the range really is the renderer's
        normalized = style_stats(images)[name]
        assert normalized.min() >= 0 and normalized.max() <= 1
        assert normalized.quantile(0.05) < 0.2 and normalized.quantile(0.95) > 0.7, name


def test_toy_tokenizer_keeps_eos_and_knows_every_word():
    assert EOS_ID != 2  # see VOCAB: id 2 would select legacy CLIP pooling
    tok = toy_tokenizer()
    ids = tok(["Detailed. Bright, detailed, vivid. a small red circle on grass on grass"], padding="max_length",
              max_length=16, truncation=True).input_ids[0]
    assert EOS_ID in ids  # truncation keeps [EOS], where the pooled vector is read
    assert tok.convert_tokens_to_ids("zebra") == tok.unk_token_id


def test_the_build_samples_what_the_app_shows():
    """One code path: the build's and quality report's sampler (toybuild.generator.samples, on a backend built from
    the toy world's files) gives the very images the app's /generate and `eval` make from the toy-srpo preset."""
    prompts = ["a red circle on sky", "Dark. a blue square on snow"]
    app_cfg = config.load("toy-srpo", ["sample_steps=6"])
    app_side = evaluate.generate(evaluate.load_models(app_cfg), app_cfg, prompts, seed=11)
    build_side = gen.samples(FluxBackend.from_pretrained(assets.toy_dir() / "generator"), prompts, 11, steps=6,
                             guidance=app_cfg.sample_guidance)
    assert build_side.shape == (2, 3, 64, 64)
    assert torch.equal(build_side, app_side)


def test_smoke_build_writes_loadable_directories(tmp_path):
    plan = Plan(scale=1e-4, generator_pool=32, judge_reconstructions=32, eval_images=32, eval_seeds=1, sample_steps=2)
    log = build(tmp_path, plan)
    assert set(log) == {"vae", "judge", "generator", "reward"}
    assert all(log[s]["steps"] == 2 and log[s]["curve"] for s in log)
    for card in ("generator", "generator/vae", "judge", "reward"):
        assert "Measured quality" in (tmp_path / card / "README.md").read_text()
    assert all(f.stat().st_size < 10 * 1024**2 for f in tmp_path.rglob("*") if f.is_file())

    backend = FluxBackend.from_pretrained(tmp_path / "generator")
    assert backend.latent_shape(64) == (8, 16, 16) and backend.unknown_words("a red zebra") == ["zebra"]
    cond = backend.encode_prompts(["a red circle on sky"])
    v = backend.velocity(torch.randn(1, 8, 16, 16), torch.tensor([0.5]), cond)
    assert backend.decode(v).shape == (1, 3, 64, 64)
    reward = ClipReward.from_pretrained(tmp_path / "reward", use_logit_scale=False)
    f = reward.image_features(render(sample_scenes(2, 0)))
    assert f.shape == (2, 64) and reward.scale == 1.0 and reward.unknown_words("a red zebra") == ["zebra"]
    judge = ContentClassifier.from_pretrained(tmp_path / "judge")
    assert judge(torch.rand(2, 3, 64, 64))["shape"].shape == (2, 3)
