"""Test settings: nothing may reach a network; every test runs on CPU with tiny or toy models."""

import os
import socket
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # app.py lives at the repo root, outside any package


@pytest.fixture(scope="session")
def launch_app():
    """Build the real app and launch it on a free local port: launch(runs_dir, preset) -> (demo, url)."""
    import app

    def launch(runs_dir: Path, preset: str = "tiny"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        demo = app.build_demo(preset=preset, runs_dir=runs_dir)
        _, url, _ = demo.queue().launch(prevent_thread_lock=True, server_port=port, quiet=True, **app.LAUNCH)
        return demo, url
    return launch
