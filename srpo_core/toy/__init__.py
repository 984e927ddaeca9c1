"""The toy world: its vocabulary and the tiny FLUX-family models built in code."""
