"""The probe set: exact next-token probability of named token classes at named decision positions.

A probe file (YAML, or JSONL with one item per line) names fixed held-out prompts, the decision
position of each (the next token after the chat template's generation prompt plus an optional
`response_prefix`), and token classes (class name -> token strings). Every `logging.probe_every`
steps the run logs, from one forward pass fetched in one transfer (docs/algorithms.md section 4):

    probe/pi_<class>             the class's softmax mass, averaged over the items that define it
    probe/pi_rest                the mass outside every class of an item
    probe/pi_<class>/<subset>    the same over the items of one subset (and probe/pi_rest/<subset>)
    probe/logit_<class>          log sum_{v in class} exp(z_v) of the raw logits z, item mean
    probe/zc_<class>             the same minus the item's mean logit over the vocabulary (shift-free)
    probe/entropy[/<subset>]     entropy (nats) of the whole next-token distribution, item mean

An item's subset is optional: `subset:` in the file, or the held-out example's subset for
`from_split` items (the toy task: hard, easy).

YAML:
    classes: {S1: ["<S1>"], S2: ["<S2>"], S3: ["<S3>"]}   # default classes of every item
    prompts:                                              # a list of items ...
      - {prompt: "17 42 17", response_prefix: "", subset: easy}
      - {prompt: "3 8 1", classes: {S2: ["<S2>"]}}        # ... an item may name its own classes
    # ... or held-out prompts of the run's task:  prompts: {from_split: test, count: 64}
JSONL: one {"prompt", "response_prefix"?, "classes", "subset"?} object per line.

A task may ship its own probe (`Task.probe`), used when no probe file is given: the toy task's is
pi(S1), pi(S2), pi(S3) and the rest at response position 0 of 64 held-out prompts (also written out
as rlvr_jax/configs/probes/toy_strategy.yaml).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import yaml

from rlvr_jax.config import Config, ConfigError, packaged_names, resolve_config
from rlvr_jax.data import PromptPipeline
from rlvr_jax.dynamics import probe_statistics
from rlvr_jax.tokenizer import encode_left_padded, render_prompt
from rlvr_jax.types import PromptBatch


class ProbeError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class ProbeItem:
    prompt: str
    response_prefix: str = ""
    classes: dict[str, list[str]] | None = None  # None: the file's default classes
    subset: str | None = None  # reported on its own as probe/pi_<class>/<subset> (None: only overall)


@dataclasses.dataclass(frozen=True)
class ProbeSpec:
    classes: dict[str, list[str]]
    items: list[ProbeItem] = dataclasses.field(default_factory=list)
    from_split: tuple[str, int] | None = None  # (split, count): held-out prompts of the run's task


def load_probe_file(path: str | Path) -> ProbeSpec:
    try:
        path = resolve_config(path, "probes")  # a file, or a packaged probe by name
    except ConfigError:
        known = ", ".join(packaged_names("probes"))
        raise ProbeError(f"probe file {path} does not exist (logging.probe_file; packaged probes: {known})") from None
    if path.suffix == ".jsonl":
        items = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    items.append(_item(json.loads(line), f"{path}:{number}", {}))
                except json.JSONDecodeError as err:
                    raise ProbeError(f"{path}:{number} is not JSON: {err}") from None
        return _checked(ProbeSpec(classes={}, items=items), path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ProbeError(f"probe file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict) or "prompts" not in data:
        raise ProbeError(f"probe file {path}: expected a mapping with `prompts` (and `classes`)")
    classes = _classes(data.get("classes", {}), f"{path}: classes")
    prompts = data["prompts"]
    if isinstance(prompts, dict):
        if set(prompts) - {"from_split", "count"} or "from_split" not in prompts:
            raise ProbeError(f"{path}: prompts must be a list of items or {{from_split: SPLIT, count: N}}")
        return _checked(
            ProbeSpec(classes, from_split=(str(prompts["from_split"]), int(prompts.get("count", 64)))), path
        )
    if not isinstance(prompts, list):
        raise ProbeError(f"{path}: prompts must be a list of items or {{from_split: SPLIT, count: N}}")
    items = [_item(p, f"{path}: prompts[{i}]", classes) for i, p in enumerate(prompts)]
    return _checked(ProbeSpec(classes, items=items), path)


def _item(raw: Any, where: str, default_classes: dict[str, list[str]]) -> ProbeItem:
    if not isinstance(raw, dict) or not isinstance(raw.get("prompt"), str):
        raise ProbeError(f"{where}: an item needs a `prompt` string")
    unknown = set(raw) - {"prompt", "response_prefix", "classes", "subset"}
    if unknown:
        raise ProbeError(f"{where}: unknown keys {sorted(unknown)} (valid: prompt, response_prefix, classes, subset)")
    classes = _classes(raw["classes"], f"{where}: classes") if "classes" in raw else None
    if classes is None and not default_classes:
        raise ProbeError(f"{where}: no classes (give `classes` here or at the top of the file)")
    subset = raw.get("subset")
    if subset is not None and (not isinstance(subset, str) or not subset or "/" in subset):
        raise ProbeError(f"{where}: subset must be a non-empty name without '/', got {subset!r}")
    return ProbeItem(raw["prompt"], str(raw.get("response_prefix", "")), classes, subset)


def _classes(raw: Any, where: str) -> dict[str, list[str]]:
    if not isinstance(raw, dict) or not all(
        isinstance(v, list) and v and all(isinstance(t, str) for t in v) for v in raw.values()
    ):
        raise ProbeError(f"{where}: expected {{class name: [token strings]}}")
    bad = [k for k in raw if not isinstance(k, str)]
    if bad:
        raise ProbeError(
            f"{where}: class name {bad[0]!r} is not a string (YAML reads yes/no/on/off as booleans: quote the name)"
        )
    if "rest" in raw:
        raise ProbeError(f"{where}: `rest` is reserved (the mass outside every class)")
    return {str(k): list(v) for k, v in raw.items()}


def _checked(spec: ProbeSpec, path: Path) -> ProbeSpec:
    if not spec.items and spec.from_split is None:
        raise ProbeError(f"probe file {path} has no prompts")
    return spec


# --- on the device --------------------------------------------------------------------------------


class Probe:
    """Callable params -> the probe's metrics (module docstring); disabled when there is no probe."""

    def __init__(self, fn: Callable | None, arrays: ProbeArrays | None = None):
        self.fn, self.enabled = fn, fn is not None
        self.names = arrays.names if arrays else []
        self.subsets = arrays.subsets if arrays else []
        # (subset, class) pairs with at least one item: only those get a per-subset key.
        self.defined = (arrays.in_subset @ arrays.applies > 0) if arrays else np.zeros((0, 0), bool)

    def __call__(self, params: Any) -> dict[str, float]:
        if self.fn is None:
            return {}
        out = jax.device_get(self.fn(params))  # one transfer, at the probe's cadence only
        classes = self.names + ["rest"]
        metrics = {f"probe/pi_{name}": float(v) for name, v in zip(classes, np.asarray(out["pi"]))}
        for s, subset in enumerate(self.subsets):
            values = np.asarray(out["pi_subset"][s])
            for c, name in enumerate(classes):
                if name == "rest" or self.defined[s, c]:
                    metrics[f"probe/pi_{name}/{subset}"] = float(values[c])
        for c, name in enumerate(self.names):
            metrics[f"probe/logit_{name}"] = float(out["logit"][c])
            metrics[f"probe/zc_{name}"] = float(out["zc"][c])
        metrics["probe/entropy"] = float(out["entropy"])
        for s, subset in enumerate(self.subsets):
            metrics[f"probe/entropy/{subset}"] = float(out["entropy_subset"][s])
        return metrics


def probe_spec(cfg: Config, task: Any) -> ProbeSpec | None:
    """The run's probe: logging.probe_file, else the task's own (`task.probe()`), else none."""
    return load_probe_file(cfg.logging.probe_file) if cfg.logging.probe_file else task.probe()


def make_probe(spec: ProbeSpec | None, cfg: Config, task: Any, tokenizer: Any, graphdef: Any) -> Probe:
    """The probe as a jitted function of the params (`spec` from `probe_spec`, checked before any work)."""
    if spec is None:
        return Probe(None)
    arrays = probe_arrays(spec, cfg, task, tokenizer)
    from flax import nnx

    a = arrays
    fn = jax.jit(
        lambda p: probe_statistics(nnx.merge(graphdef, p), a.prompts, a.member, a.applies, a.class_ids, a.in_subset)
    )
    return Probe(fn, arrays)


class ProbeArrays(NamedTuple):
    """The probe set as arrays (numpy: the jitted probe bakes them in as constants, which every host can do)."""

    prompts: PromptBatch  # left padded, decision position last
    names: list[str]  # class names
    member: np.ndarray  # f32[C, V]: 1 where token v spells class c
    applies: np.ndarray  # f32[B, C]: 1 where item b defines class c
    class_ids: np.ndarray  # i32[C, K]: each class's token ids, padded with -1
    subsets: list[str]  # subset names (sorted)
    in_subset: np.ndarray  # f32[S, B]: 1 where item b belongs to subset s


def probe_arrays(spec: ProbeSpec, cfg: Config, task: Any, tok: Any) -> ProbeArrays:
    """The items of `spec` (from_split: held-out prompts of the task, with their subsets) as arrays."""
    items = spec.items
    if spec.from_split is not None:
        split, count = spec.from_split
        data = cfg.data.model_copy(update={"prompts_per_step": count})
        source = task.open_split(split, cfg.data)
        _, examples = PromptPipeline(source, data, tok, cfg.run.seed + 1, normalize=task.example).batch(0)
        items = [ProbeItem(e["prompt"], subset=e.get("subset") or None) for e in examples]
    names = list(dict.fromkeys([*spec.classes] + [c for it in items for c in (it.classes or {})]))
    vocab = len(tok)
    member = np.zeros((len(names), vocab), np.float32)
    applies = np.zeros((len(items), len(names)), np.float32)
    for b, item in enumerate(items):
        for name, strings in (item.classes or spec.classes).items():
            c = names.index(name)
            applies[b, c] = 1.0
            member[c, [_token_id(tok, s, name) for s in strings]] = 1.0
    ids = [np.flatnonzero(row) for row in member]
    class_ids = np.full((len(names), max(map(len, ids), default=1)), -1, np.int32)
    for c, row in enumerate(ids):
        class_ids[c, : len(row)] = row
    subsets = sorted({it.subset for it in items if it.subset})
    in_subset = np.zeros((len(subsets), len(items)), np.float32)  # S may be 0: no per-subset keys
    for s, name in enumerate(subsets):
        in_subset[s] = [it.subset == name for it in items]
    texts = [
        render_prompt(tok, it.prompt, cfg.data.chat_template, cfg.data.plain_template) + it.response_prefix
        for it in items
    ]
    tokens, mask = encode_left_padded(tok, texts)
    prompts = PromptBatch(tokens=np.asarray(tokens), mask=np.asarray(mask), index=np.arange(len(items)))
    return ProbeArrays(prompts, names, member, applies, class_ids, subsets, in_subset)


def _token_id(tok: Any, text: str, name: str) -> int:
    vocab = tok.get_vocab()
    if text in vocab:
        return int(vocab[text])
    ids = tok.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ProbeError(
            f"probe class {name}: {text!r} is {len(ids)} tokens for this tokenizer; a class lists "
            "single tokens (give each spelling, e.g. ' 7' and '7', as its own entry)"
        )
    return int(ids[0])
