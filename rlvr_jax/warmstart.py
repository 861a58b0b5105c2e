"""The toy task's base policy (rlvr_jax/tasks/toy_strategy.py): a tiny decoder warm-started by SFT on strategy traces, saved HF-style.

Cached: the folder is written to a temporary name and renamed when complete, and a second run with
the same warm-start settings reuses it (a different setting rebuilds).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

from rlvr_jax.config import Config
from rlvr_jax.data.toy_strategy import toy_tokenizer, warmstart_examples
from rlvr_jax.distributed import allgather_objects, folder_is_shared, sync
from rlvr_jax.mesh import TRAIN_RULES
from rlvr_jax.model import Arch, init_params, save_pretrained
from rlvr_jax.rng import purpose_key
from rlvr_jax.sft import SFTSpec, batch_rows, encode_traces, sft_step
from rlvr_jax.tokenizer import load_tokenizer, render_prompt, stop_token_ids
from rlvr_jax.types import TrainBatch
from rlvr_jax.update import init_train_state, jit_step

END_OF_TURN = "<|im_end|>"
TRACE_NEUTRAL_TASK_ARGS = ("reward",)  # task_args that leave every warm-start trace as it is


def warmstart_seed(cfg: Config) -> int:
    """The warm start's seed: warmstart.seed, else run.seed (so a plain run keeps its bits)."""
    return cfg.run.seed if cfg.warmstart.seed is None else cfg.warmstart.seed


def fingerprint(cfg: Config) -> dict:
    """Everything the base policy depends on; a cached folder with another fingerprint is rebuilt."""
    out = {
        "recipe": 3,
        # The seed is recorded once, as used: the same base from warmstart.seed=k or run.seed=k keeps its cache.
        "warmstart": cfg.warmstart.model_dump(mode="json", exclude={"seed"}),
        "arch": cfg.model.arch,
        "seed": warmstart_seed(cfg),
        "max_prompt_len": cfg.data.max_prompt_len,
        "max_new_tokens": cfg.rollout.max_new_tokens,
    }
    # The choice traces' instances; only when set, so older caches stay valid. `reward` only names how the
    # verifier scores S1 (the rows' subset label): the traces' prompts and responses do not depend on it,
    # so the graded variant and the tie case share one base policy.
    shaping = {k: v for k, v in cfg.data.task_args.items() if k not in TRACE_NEUTRAL_TASK_ARGS}
    if shaping:
        out["task_args"] = shaping
    return out


def build_base_policy(
    cfg: Config, out_dir: Path, data_dir: Path, mesh: jax.sharding.Mesh, log: Callable[[str], None] = print
) -> Path:
    """Return an HF folder with the warm-started policy and its tokenizer (reused when cached)."""
    record = out_dir / "warmstart.json"
    cached = record.is_file() and json.loads(record.read_text()).get("fingerprint") == fingerprint(cfg)
    if all(allgather_objects(cached)):  # every host must take the same branch
        log(f"warm start: reusing the base policy in {out_dir}")
        return out_dir
    # Multi-host: all processes run the SFT steps (one sharded computation); process 0 alone writes the
    # files into a shared folder, every process its own copy into a host-local one.
    shared = folder_is_shared(out_dir.parent, "warmstart")  # a collective: every process asks
    writes = jax.process_index() == 0 or not shared
    start = time.perf_counter()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if writes:
        shutil.rmtree(tmp, ignore_errors=True)
        toy_tokenizer(tmp)
    sync("rlvr_jax_warmstart_tokenizer")
    tok = load_tokenizer(tmp)
    arch = _toy_arch(cfg, tok)
    graphdef, params = init_params(arch, mesh, TRAIN_RULES, purpose_key(warmstart_seed(cfg), "init"))
    data = _training_data(cfg, tok, data_dir)
    traces = data.tokens
    spec = SFTSpec(steps=cfg.warmstart.steps, batch_size=cfg.warmstart.batch_size, lr=cfg.warmstart.lr)
    warmup = max(spec.steps // 10, 1)
    tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, spec.lr, warmup, spec.steps + 1), weight_decay=0.0)
    state = init_train_state(params, tx, mesh, TRAIN_RULES)
    step = jit_step(lambda s, b: sft_step(s, b, graphdef, tx), state, mesh, TRAIN_RULES)
    losses = []
    for k in range(spec.steps):
        state, metrics = step(state, batch_rows(data, k, spec.batch_size, warmstart_seed(cfg)))
        losses.append(metrics["sft/loss"])
    final_loss = float(np.mean(jax.device_get(losses[-10:])))
    save_pretrained(tmp, arch, state.params, tok, write=writes)
    info = {
        "fingerprint": fingerprint(cfg),
        "final_loss": final_loss,
        "traces": len(traces),
        "seconds": round(time.perf_counter() - start, 2),
    }
    if writes:
        (tmp / "warmstart.json").write_text(json.dumps(info, indent=2))
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
    sync("rlvr_jax_warmstart_done")
    log(
        f"warm start: {spec.steps} SFT steps on {len(traces)} traces (choice + execution), final loss {final_loss:.3f}, "
        f"{info['seconds']:.1f} s -> {out_dir}"
    )
    return out_dir


def _training_data(cfg: Config, tok, data_dir: Path) -> TrainBatch:
    """Two kinds of traces. Choice traces (strategy drawn from the prior) teach pi(S1, S2, S3) at the
    first response token. Execution traces (uniform strategies, first-token loss masked out) teach
    faithful execution of every strategy: with the prior alone, S2 appears on about 16 hard problems
    in 4096 traces and the policy learns "S2 copies the first number" like S1, so the rare optimal
    strategy would not actually solve the hard subset.

    Choice traces are drawn on the run's own instances (data.task_args, e.g. the graded or tie variant's
    a == b prompts); their prior, count and seed come from warmstart.* (the seed: warmstart.seed, else
    run.seed). Execution traces keep half hard (binary) instances whatever the variant, since only a != b
    shows S1 and S2 apart."""

    def encode(prior: tuple[float, ...], seed: int, **params: Any) -> TrainBatch:
        traces = warmstart_examples(data_dir, prior=prior, warmstart_size=cfg.warmstart.traces, seed=seed, **params)
        prompts = [render_prompt(tok, t["prompt"], cfg.data.chat_template, cfg.data.plain_template) for t in traces]
        return encode_traces(
            tok,
            prompts,
            [t["response"] for t in traces],
            cfg.data.max_prompt_len,
            cfg.rollout.max_new_tokens,
            END_OF_TURN,
        )

    # The toy task refuses prior and warmstart_size in task_args (warmstart.* owns them); the traces' seed is
    # the warm start's (warmstart.seed, else run.seed).
    seed = warmstart_seed(cfg)
    variant = {k: v for k, v in cfg.data.task_args.items() if k != "seed"}
    choice = encode(tuple(cfg.warmstart.prior), seed, **variant)
    # Half hard: S1 and S2 differ only there, so execution traces show the difference often.
    execution = encode((1 / 3, 1 / 3, 1 / 3), seed + 1, hard_fraction=0.5)
    execution = execution.replace(mask=execution.mask.copy())
    execution.mask[:, 0] = 0
    return jax.tree.map(lambda a, b: np.concatenate([a, b]), choice, execution)


def _toy_arch(cfg: Config, tok) -> Arch:
    fields = dict(cfg.model.arch)
    fields.setdefault("vocab_size", len(tok))
    if fields["vocab_size"] < len(tok):
        raise ValueError(
            f"model.arch.vocab_size={fields['vocab_size']} is smaller than the toy tokenizer ({len(tok)} tokens)"
        )
    fields.update(eos_token_id=list(stop_token_ids(tok)), pad_token_id=int(tok.pad_token_id), bos_token_id=None)
    return Arch.from_hf(fields, source="config model.arch")
