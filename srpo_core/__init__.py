"""srpo_core: Direct-Align and SRPO for rectified-flow text-to-image models."""

import logging

# peft / diffusers import bitsandbytes when it is installed; on CPUs with AVX512-BF16, bitsandbytes 0.50 then tries
# to fetch a 4-bit kernel from the Hub through the optional `kernels` package and logs a warning line when it
# cannot. srpo_core never runs 4-bit kernels on the CPU (quantization is CUDA-only), so that line is noise on
# stderr, where the CLI's one-line errors go.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
