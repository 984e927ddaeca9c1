"""LoRA export: the kohya / sd-scripts FLUX format (what fluxgym, ComfyUI and Forge read) loads back through diffusers'
own kohya converter to the very weights of the diffusers file, with alpha != rank."""

import json
import subprocess
import sys

import pytest
import torch
from diffusers import FluxPipeline
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from srpo_core import config
from srpo_core.config import ConfigError
from srpo_core.export import export, to_kohya
from srpo_core.session import run

from conftest import ROOT

RANK, ALPHA, INNER, MLP = 4, 8.0, 3072, 12288  # FLUX.1-dev's widths: diffusers' converter is written for them
DOUBLE = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
          "attn.add_v_proj", "attn.to_add_out", "ff.net.2"]


def flux_lora() -> dict[str, torch.Tensor]:
    """A diffusers-format LoRA on FLUX.1-dev-shaped layers: a double block's every attention projection and an MLP
    output, a single block's q / k / v (part of the fused linear1, whose MLP part it leaves untrained) and proj_out."""
    g = torch.Generator().manual_seed(0)
    shapes = {("transformer_blocks", 0, m): (INNER, MLP if m == "ff.net.2" else INNER) for m in DOUBLE}
    shapes.update({("single_transformer_blocks", 1, m): (INNER, INNER) for m in ("attn.to_q", "attn.to_k", "attn.to_v")})
    shapes[("single_transformer_blocks", 1, "proj_out")] = (INNER, INNER + MLP)
    state = {}
    for (kind, i, module), (out, inp) in shapes.items():
        state[f"transformer.{kind}.{i}.{module}.lora_A.weight"] = torch.randn(RANK, inp, generator=g) / 10
        state[f"transformer.{kind}.{i}.{module}.lora_B.weight"] = torch.randn(out, RANK, generator=g) / 10
    return state


def test_kohya_file_loads_through_diffusers_to_the_same_weights(tmp_path):
    state = flux_lora()
    path = tmp_path / "kohya.safetensors"
    save_file(to_kohya(state, ALPHA), path)
    kohya = load_file(path)
    assert all(k.startswith("lora_unet_") for k in kohya)
    assert float(kohya["lora_unet_double_blocks_0_img_attn_qkv.alpha"]) == 3 * ALPHA  # 3 fused parts: rank 3r
    assert float(kohya["lora_unet_double_blocks_0_img_attn_proj.alpha"]) == ALPHA
    assert kohya["lora_unet_single_blocks_1_linear1.lora_up.weight"].shape == (3 * INNER + MLP, 3 * RANK)
    back = FluxPipeline.lora_state_dict(str(path))
    back = back[0] if isinstance(back, tuple) else back
    for key in [k for k in state if k.endswith("lora_A.weight")]:
        base = key.removesuffix(".lora_A.weight")
        expected = ALPHA / RANK * state[f"{base}.lora_B.weight"] @ state[key]  # the diffusers file's fused update
        loaded = back[f"{base}.lora_B.weight"] @ back[f"{base}.lora_A.weight"]
        assert torch.allclose(loaded, expected, atol=1e-6), base
    mlp = "transformer.single_transformer_blocks.1.proj_mlp"
    assert not (back[f"{mlp}.lora_B.weight"] @ back[f"{mlp}.lora_A.weight"]).any()  # the untrained fused part


def test_export_command_writes_both_formats_of_a_run(tmp_path):
    events = run(config.load("tiny", ["steps=1", "preview_every=0", "lora_alpha=16"]), tmp_path / "runs")
    run_dir = events[-1].run_dir
    proc = subprocess.run([sys.executable, "-m", "srpo_core", "export", str(run_dir), "--format", "kohya", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    path = json.loads(proc.stdout.splitlines()[-1])["path"]
    with safe_open(path, "pt") as f:
        assert f.metadata()["ss_network_alpha"] == "16.0" and f.metadata()["ss_network_module"] == "networks.lora_flux"
        alphas = {k: f.get_tensor(k) for k in f.keys() if k.endswith(".alpha")}
    assert alphas and {float(a) for a in alphas.values()} <= {16.0, 32.0, 48.0}
    copy = export(run_dir, "diffusers", tmp_path / "copy.safetensors")
    assert load_file(copy).keys() == load_file(run_dir / "pytorch_lora_weights.safetensors").keys()
    with pytest.raises(ConfigError, match="format must be one of diffusers, kohya"):
        export(run_dir, "comfy")
    with pytest.raises(ConfigError, match="is not a run directory"):
        export(tmp_path, "kohya")
