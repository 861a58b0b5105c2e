"""Every shipped config builds its abstract (shape-only) train state, so none rots."""

import jax
import pytest

from rlvr_jax.config import PACKAGED, load_config
from rlvr_jax.model import Arch, abstract_model
from rlvr_jax.update import make_optimizer, total_optimizer_steps

CONFIGS = sorted(p for p in PACKAGED.rglob("*.yaml") if "probes" not in p.parts)
# Parameter counts of the published checkpoints (embeddings included).
EXPECTED_PARAMS = {1536: 1.54e9, 3584: 7.62e9}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_builds_abstract_state(path):
    cfg = load_config(path)
    arch = Arch.from_hf({"vocab_size": 512, **cfg.model.arch}, source=str(path))
    _graphdef, params = abstract_model(arch, cfg.model.param_dtype, cfg.model.dtype, cfg.model.remat)
    tx = make_optimizer(cfg.optim, total_optimizer_steps(cfg.optim, cfg.run.steps))
    opt_state = jax.eval_shape(tx.init, params)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    assert n_params == arch.num_params
    assert sum(x.size for x in jax.tree.leaves(opt_state)) >= 2 * n_params  # Adam's two moments
    if arch.hidden_size in EXPECTED_PARAMS:
        assert n_params == pytest.approx(EXPECTED_PARAMS[arch.hidden_size], rel=0.01)
    rows = cfg.data.prompts_per_step * cfg.rollout.group_size
    assert rows % (cfg.optim.mini_batches * cfg.optim.micro_batches) == 0, "rollouts must split evenly"
