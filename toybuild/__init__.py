"""Building and training the toy world (beside the runtime package, as diffusers keeps its training scripts outside
`src/`): the build command, the VAE / judge / generator / reward trainers and the quality report. The world's
definition (vocabulary, renderer, judge inference, asset loading) lives in `srpo_core.toy`; training, sampling and
scoring here go through srpo_core's own FluxBackend, `evaluate.generate` and ClipReward code.

    python -m toybuild --out assets/toy      # the build (`--help` for its options)
    python -m toybuild.quality               # the quality bars on fresh held-out data
"""
