"""rlvr-jax: RL with verifiable rewards for LLMs in JAX/Flax NNX.

    from rlvr_jax import Trainer, load_config      # the Python API (rlvr_jax/api.py)

Both are imported on first use, so `import rlvr_jax.<module>` stays light (the reward workers import
only what they need).
"""

from typing import Any

__all__ = ["Trainer", "load_config"]


def __getattr__(name: str) -> Any:
    if name == "Trainer":
        from rlvr_jax.api import Trainer

        return Trainer
    if name == "load_config":
        from rlvr_jax.config import load_config

        return load_config
    raise AttributeError(f"module 'rlvr_jax' has no attribute {name!r}")
