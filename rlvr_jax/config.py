"""Frozen, typed run configuration, nested by pipeline stage.

YAML files in `configs/` plus dotted command-line overrides (`rollout.temperature=0.7`) are merged
into one plain dict and validated by pydantic in strict mode, so a misspelt key or a wrong type is
an error that names the key (and, for unknown keys and modes, the valid choices). Configs are never
mutated; derived values are properties.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import itertools
import re
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import yaml
from etils import epath
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator

from rlvr_jax.storage import as_path, write_text_atomic


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names the key and the fix."""


class _Section(BaseModel):
    # strict: "3" is not an int and 1.5 is not an int; extra=forbid: unknown keys are errors;
    # allow_inf_nan=False: no setting means anything at .nan or .inf (lr=.nan would train on NaN).
    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, use_attribute_docstrings=True, allow_inf_nan=False
    )


def _mode(enum_type: type[enum.Enum]) -> Any:
    """A mode field: strict everywhere else, but YAML strings must convert to the enum."""
    return Annotated[enum_type, Strict(False)]


class DType(str, enum.Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"


class Remat(str, enum.Enum):
    full = "full"
    save_linear = "save_linear"


class Estimator(str, enum.Enum):
    grpo = "grpo"
    drgrpo = "drgrpo"
    rloo = "rloo"
    nsr = "nsr"
    psr = "psr"
    w_reinforce = "w_reinforce"


# Estimators that compare a sample with the others of its group: a group of one has no baseline.
GROUP_RELATIVE = frozenset({Estimator.grpo, Estimator.drgrpo, Estimator.rloo})


class SignFilter(str, enum.Enum):
    full = "full"
    negative_only = "negative_only"
    positive_only = "positive_only"


class StdMode(str, enum.Enum):
    population = "population"
    unbiased = "unbiased"


class LossDenominator(str, enum.Enum):
    kept = "kept"  # NSR / PSR: only the rollouts they train on (incorrect / correct); others: all
    all = "all"  # every rollout
    nonzero = "nonzero"  # the rollouts whose advantage after the sign filter is non-zero (GRPO-N: negatives)


class PolicyObjective(str, enum.Enum):
    ppo = "ppo"  # token-level clipped ratio
    gspo = "gspo"  # sequence-level ratio


class KLEstimator(str, enum.Enum):
    k1 = "k1"
    k2 = "k2"
    k3 = "k3"


class Aggregation(str, enum.Enum):
    token_mean = "token_mean"
    seq_mean_token_mean = "seq_mean_token_mean"
    seq_mean_token_sum_norm = "seq_mean_token_sum_norm"


class Schedule(str, enum.Enum):
    constant = "constant"
    cosine = "cosine"
    linear = "linear"


class LongPrompt(str, enum.Enum):
    error = "error"
    truncate = "truncate"


class BestMode(str, enum.Enum):
    max = "max"
    min = "min"


class DistributedInit(str, enum.Enum):
    auto = "auto"  # initialise when the environment says this is a multi-process job (TPU pod, SLURM)
    always = "always"
    never = "never"


class RunConfig(_Section):
    name: str = "run"
    """Run name used in logs and the default run directory."""
    seed: int = Field(default=0, ge=0, lt=2**63)
    """One seed, split by purpose (init, data, rollout, train) and folded with the step (0 <= seed < 2**63:
    numpy's SeedSequence takes no negative numbers, jax.random.key no more than 64 bits)."""
    steps: int = Field(default=100, ge=0)
    """Number of RL steps (one rollout batch each)."""
    run_dir: str | None = None
    """Where outputs go; default runs/<name>."""
    compile_cache: str | None = "~/.cache/rlvr-jax/xla"
    """Persistent XLA compilation cache shared by runs (null: off), so a second run of the same programs
    starts without compiling them; JAX_COMPILATION_CACHE_DIR, when set, takes its place."""


class ModelConfig(_Section):
    path: str | None = None
    """Hugging Face folder (config.json + safetensors); None builds a random model from `arch`."""
    tokenizer: str | None = None
    """Tokenizer folder; default: the model folder."""
    dtype: _mode(DType) = DType.float32
    """Compute dtype (float32 on CPU; bfloat16 on TPU/GPU)."""
    param_dtype: _mode(DType) = DType.float32
    """Storage dtype of the parameters."""
    remat: bool | _mode(Remat) = False
    """Recompute each decoder layer in the backward pass (saves activation memory). true or "full": the
    backward pass keeps only each layer's input. "save_linear": it also keeps the outputs of the layer's
    linear projections (q/k/v/o, gate/up/down) and recomputes attention scores, softmax and the
    elementwise ops: less recompute for more memory (`rlvr-jax plan` sizes each)."""

    @field_validator("remat", mode="before")
    @classmethod
    def _remat_choice(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in {mode.value for mode in Remat}:  # one line, not the union's two
            raise ValueError(f"expected true, false, {' or '.join(mode.value for mode in Remat)}; got {value!r}")
        return value

    scan_layers: bool = False
    """Store the decoder layers stacked ([L, ...] per weight) and run them as one `lax.scan` in training:
    one layer is compiled whatever the depth, and the optimizer updates one leaf per weight, not L. HF
    files load and export as usual (stacked on load, split on export); the sampler gets a per-layer copy
    (its decode loop runs the layers unrolled: see README, Compile time). Checkpoints hold the stacked
    tree, so a run cannot resume with this key changed."""
    arch: dict[str, Any] = Field(default_factory=dict)
    """HF-style config.json fields for a random model when `path` is None."""
    allow_nonfinite: bool = False
    """Load weights holding NaN or inf (checked on device after loading; by default an error naming the tensor)."""


class DistributedConfig(_Section):
    init: _mode(DistributedInit) = DistributedInit.auto
    """When to call jax.distributed.initialize."""
    coordinator_address: str | None = None
    """host:port of process 0 (GPU clusters, tests); TPU VMs detect it."""
    num_processes: int | None = Field(default=None, ge=1)
    process_id: int | None = Field(default=None, ge=0)
    """This process's rank, 0 <= process_id < num_processes."""

    @model_validator(mode="after")
    def _ranks_fit(self) -> DistributedConfig:
        address = self.coordinator_address
        if address is not None and not _HOST_PORT.fullmatch(address):
            raise ValueError(
                f"coordinator_address={address!r} must be host:port with a port in 1..65535, e.g. 10.0.0.2:8476"
            )
        if address is not None and not 0 < int(address.rpartition(":")[2]) < 65536:
            raise ValueError(f"coordinator_address={address!r}: the port must be in 1..65535")
        if self.num_processes is not None and self.process_id is not None and self.process_id >= self.num_processes:
            raise ValueError(
                f"process_id={self.process_id} must be below num_processes={self.num_processes} (ranks count from 0)"
            )
        return self


# host:port, where host is a name, an IPv4 address or a bracketed IPv6 address.
_HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):[0-9]{1,5}")


class MeshConfig(_Section):
    data: int = 1
    """Data-parallel replicas (-1: the devices left over)."""
    fsdp: int = -1
    """Parameter/optimizer-state sharding axis (-1: the devices left over)."""
    tensor: int = 1
    """Tensor-parallel axis (heads, MLP hidden, vocab)."""
    strict_sharding: bool = False
    """A parameter dimension that its mesh axes do not divide is replicated (and listed at startup);
    true makes that an error instead (a mis-sized mesh otherwise shows up later as out-of-memory)."""
    distributed: DistributedConfig = DistributedConfig()

    @model_validator(mode="after")
    def _axes_fit(self) -> MeshConfig:
        sizes = {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}
        if bad := [f"{k}={v}" for k, v in sizes.items() if v == 0 or v < -1]:
            raise ValueError(f"{', '.join(bad)}: a mesh axis size is a positive number of devices, or -1 (the rest)")
        if len(rest := [k for k, v in sizes.items() if v == -1]) > 1:
            raise ValueError(
                f"{' and '.join(f'{k}=-1' for k in rest)}: at most one axis takes the devices left over; "
                "give the others sizes"
            )
        return self


class DataSource(str, enum.Enum):
    task = "task"  # a registered task (data.task): its own builder
    jsonl = "jsonl"  # JSON lines files (data.path: a file, a glob, or a gs:// URL)
    parquet = "parquet"  # Parquet files (verl's layout works as is)
    hf = "hf"  # a `datasets` folder written by save_to_disk, or a Hub dataset id
    python = "python"  # rows handed to rlvr_jax.Trainer in Python (train_dataset / eval_dataset)


class DataConfig(_Section):
    source: _mode(DataSource) = DataSource.task
    """Where prompts come from: a registered task (`data.task`), or files (`data.path`)."""
    task: str = "toy_strategy"
    """The registered task (source: task); with files, the name the run's records use (left at this default,
    the files' name: the file's stem, or its folder's name for train.jsonl or a glob)."""
    task_args: dict[str, Any] = Field(default_factory=dict)
    """The registered task's dataset parameters, passed to its source for every split (training, evaluation,
    probe, warm start), each checked by the task for its name and type; e.g. toy_strategy's
    {reward: graded, hard_fraction: 0.0} (docs/algorithms.md section 6). Other values build a different
    dataset (its own folder under data_dir); a change counts as a trajectory change on resume."""
    path: str | None = None
    """Files of the train split (source jsonl/parquet: a file, a glob, a gs:// URL; hf: a folder or Hub id)."""
    prompt_key: str = "prompt"
    """Column with the prompt: a string, or chat messages [{role, content}, ...] (verl, TRL conversational)."""
    answer_key: str | None = None
    """Column with the gold answer (dotted for nested fields, e.g. reward_model.ground_truth); default: the
    first of answer, reward_model.ground_truth, ground_truth, solution that the files have."""
    id_key: str | None = None
    """Column with a row id (default: <records name>/<row>, data.task's); names the row in errors and evaluation
    records."""
    subset_key: str | None = None
    """Column whose values name subsets for per-subset pass@k (e.g. data_source, level); default none."""
    system_prompt: str | None = None
    """A system message put before each prompt (when the prompt has none)."""
    template: str | None = None
    """For string prompts: the user message, formatted with the row's columns, e.g.
    "{question}\nPut the final answer in \\boxed{}." (default: the prompt column as is)."""
    split: str = "train"
    data_dir: str | None = None
    """TFDS data directory (built datasets); default under the run directory."""
    manual_dir: str | None = None
    """Folder with the user's copies of official files (gsm8k, math)."""
    prompts_per_step: int = Field(default=16, ge=1)
    max_prompt_len: int = Field(default=64, ge=1)
    long_prompt: _mode(LongPrompt) = LongPrompt.error
    """What to do with a prompt longer than max_prompt_len: error, or truncate and count."""
    chat_template: bool = True
    """Render prompts with the tokenizer's chat template when it has one."""
    plain_template: str = "{prompt}"
    """Template used without a chat template; {prompt} is replaced by the problem text."""

    @model_validator(mode="after")
    def _template_has_prompt(self) -> DataConfig:
        if "{prompt}" not in self.plain_template:  # without it every prompt would render to the same text
            raise ValueError(
                f"plain_template={self.plain_template!r} has no {{prompt}}: the problem text would be dropped; "
                'write e.g. "Question: {prompt} Answer:"'
            )
        return self


class WarmstartConfig(_Section):
    enabled: bool = False
    """Build the base policy by supervised training on the task's warm-start traces (toy_strategy)."""
    steps: int = Field(default=300, ge=1)
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=3e-3, gt=0.0)
    prior: list[float] = Field(default_factory=lambda: [0.30, 0.02, 0.68])
    """Strategy prior of the traces (S1, S2, S3): three probabilities summing to 1."""
    traces: int = Field(default=4096, ge=1)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    """Seed of the warm start (initial weights, traces, batch order); None: run.seed. A study that varies
    only the RL seed fixes it, so all its runs share one base policy (`rlvr-jax sweep`, docs/sweep.md)."""

    @model_validator(mode="after")
    def _prior_is_a_distribution(self) -> WarmstartConfig:
        p = self.prior
        if len(p) != 3 or min(p) < 0 or abs(sum(p) - 1.0) > 1e-6:
            raise ValueError(
                f"prior={p} must be three probabilities (S1, S2, S3), each >= 0, summing to 1 (sum {sum(p):.6g})"
            )
        return self


class RolloutConfig(_Section):
    group_size: int = Field(default=8, ge=1)
    """G: samples per prompt."""
    max_new_tokens: int = Field(default=32, ge=1)
    temperature: float = Field(default=1.0, ge=0.0)
    """0 means greedy."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    """0 disables top-k."""
    stop_on_eos: bool = True
    compact_rows: int = Field(default=0, ge=0)
    """Live-row compaction. 0: the decode loop runs every row until the longest one stops. k > 0: each
    time a k-th of the batch has finished, the live rows move to a batch that much smaller (KV cache
    with them), so finished rows stop costing decode steps; one host sync and (first time only) one
    compile per batch size. Every row keeps its key and step, so the same tokens are drawn; the
    recorded log-probs can differ in the last bit (XLA picks other kernels for a smaller batch)."""


class OnError(str, enum.Enum):
    stop = "raise"  # stop with one line naming the function, the row and the problem
    zero = "zero"  # score the function 0 on that row and count it in reward/<name>/errors


# A metric-key-safe name: reward/<name>/mean must stay one path segment.
FUNCTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


class RewardFunctionConfig(_Section):
    fn: str
    """"pkg.module:attr", or "path/to/file.py:attr" (relative to the working directory, or absolute).
    Signature as TRL's, fn(prompts, completions, **columns) -> list[float | None], or verl's
    compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float | dict."""
    weight: float = 1.0
    """Its weight in the total reward (sum of weight * value; a None value adds 0)."""
    name: str | None = None
    """Metric name (reward/<name>/mean) and what correct_from refers to; default the attribute name."""

    @property
    def label(self) -> str:
        return self.name or self.fn.rpartition(":")[2]


class RewardConfig(_Section):
    verifier: str = "toy_strategy"
    """math | numeric | exact | toy_strategy. Not used when `functions` is set."""
    timeout_s: float = Field(default=2.0, gt=0.0)
    """Hard limit per sample (all of its reward functions together); past it the worker is killed."""
    workers: int = Field(default=2, ge=1)
    format_weight: float = 0.0
    """Weight of an optional format reward added to the verifier's score. Not used when `functions` is set."""
    functions: list[RewardFunctionConfig] = Field(default_factory=list)
    """Reward functions replacing the verifier, e.g. [{fn: "my_pkg.rewards:correct"}, {fn: "rewards.py:fmt",
    weight: 0.1}]; built-ins: rlvr_jax.rewards:math_correct, numeric_correct, exact_correct, toy_strategy_correct
    and the *_format checks."""
    on_error: _mode(OnError) = OnError.stop
    """A function that raises or returns a non-number / wrong-length list: raise (stop with the row) or zero."""
    correct_from: str = "total"
    """What "correct" means (pass@k, boundary sets, sign filters): total (the weighted total >=
    advantage.correct_threshold) or a function's name (its value >= the threshold). On the verifier path
    correct means the verifier's own score (the format reward left out) >= the threshold."""

    @model_validator(mode="after")
    def _functions_fit(self) -> RewardConfig:
        if not self.functions:
            return self
        default = RewardConfig.model_fields["verifier"].default
        for key, value, unset in (("verifier", self.verifier, default), ("format_weight", self.format_weight, 0.0)):
            if value != unset:
                raise ValueError(
                    f"reward.{key}={value!r} and reward.functions are both set: functions replace the verifier; "
                    f"drop reward.{key} (or set it to {unset!r}), or use e.g. rlvr_jax.rewards:math_correct "
                    "and rlvr_jax.rewards:math_format in reward.functions"
                )
        for i, f in enumerate(self.functions):
            if not all(f.fn.rpartition(":")[::2]):
                raise ValueError(
                    f"reward.functions[{i}].fn={f.fn!r} must look like 'pkg.module:attr' or 'file.py:attr'"
                )
            if not FUNCTION_NAME.fullmatch(f.label):
                raise ValueError(f"reward.functions[{i}]: name {f.label!r} must be letters, digits, _ . - (set name:)")
        labels = [f.label for f in self.functions]
        if twice := sorted({n for n in labels if labels.count(n) > 1}):
            raise ValueError(
                f"reward.functions: name(s) {', '.join(twice)} used twice; give all but one of them a distinct `name:`"
            )
        return self


ONSET = "onset"  # a schedule phase that starts when the online stage detector fires (rlvr_jax/stages.py)
_PHASE_KEYS = ("at", "delay", "sign", "estimator")


class SchedulePhase(_Section):
    """One phase of advantage.schedule: from step `at` on, these settings replace the advantage's own."""

    at: int | str
    """A step count (the phase is in force from the step after that many steps are done; 0: from the
    start), or "onset": from the probe step at which the online stage detector fires (+ delay)."""
    delay: int = Field(default=0, ge=0)
    """With at: onset, start this many steps after the onset."""
    sign: _mode(SignFilter) | None = None
    estimator: _mode(Estimator) | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, raw: Any) -> Any:
        # One plain message instead of pydantic's per-union-member errors, naming the valid keys.
        if not isinstance(raw, Mapping):
            raise ValueError(f"a phase is a mapping such as {{at: 50, sign: negative_only}}, got {raw!r}")
        unknown = sorted(set(raw) - set(_PHASE_KEYS))
        if unknown:
            raise ValueError(f"unknown phase key(s) {', '.join(map(repr, unknown))}; valid: {', '.join(_PHASE_KEYS)}")
        at = raw.get("at")
        if not ((isinstance(at, int) and not isinstance(at, bool) and at >= 0) or at == ONSET):
            raise ValueError(f"at must be a step number >= 0 or {ONSET!r}, got {at!r}")
        return raw

    @model_validator(mode="after")
    def _fits(self) -> SchedulePhase:
        if self.sign is None and self.estimator is None:
            raise ValueError(f"the phase at {self.at!r} changes nothing: give sign and/or estimator")
        if self.delay and self.at != ONSET:
            raise ValueError(f"delay is for at: {ONSET} (the phase at {self.at!r} is already a step number)")
        return self


class AdvantageConfig(_Section):
    estimator: _mode(Estimator) = Estimator.grpo
    sign: _mode(SignFilter) = SignFilter.full
    std: _mode(StdMode) = StdMode.population
    """GRPO's group std: population (divide by G) or unbiased (divide by G - 1: torch.std's default,
    as in verl and Zhu et al.'s NSR code)."""
    eps: float = Field(default=1e-6, ge=0.0)
    w_lambda: float = Field(default=0.1, ge=0.0)
    """W-REINFORCE weight of positive samples (>= 0: a negative weight would push correct samples down)."""
    correct_threshold: float = 1.0
    """A reward >= this counts as correct (NSR/PSR/W-REINFORCE, metrics)."""
    loss_denominator: _mode(LossDenominator) = LossDenominator.kept
    """Which rollouts' tokens (or sequences) the loss divides by (docs/algorithms.md section 2): kept
    (NSR: incorrect, PSR: correct, others: all), all, or nonzero (advantage != 0 after the sign filter,
    so GRPO-N divides by its negative tokens only)."""

    # A tuple (lists in YAML convert), so the section stays hashable for jit's static arguments.
    schedule: Annotated[tuple[SchedulePhase, ...], Strict(False)] = ()
    """Phases that switch `sign` and/or `estimator` during training, e.g. [{at: onset, sign: negative_only}]
    or [{at: 50, estimator: nsr}]; each overrides the settings it names from its start on, and the others
    carry over from the previous phase. Order: step phases by increasing `at`, then onset phases by
    increasing `delay` (docs/algorithms.md section 2)."""

    @model_validator(mode="after")
    def _schedule_in_order(self) -> AdvantageConfig:
        steps = [p.at for p in self.schedule if p.at != ONSET]
        delays = [p.delay for p in self.schedule if p.at == ONSET]
        first_onset = next((i for i, p in enumerate(self.schedule) if p.at == ONSET), len(self.schedule))
        if any(p.at != ONSET for p in self.schedule[first_onset:]):
            raise ValueError(
                "schedule: step phases come before the onset phases (an onset's step is not known in advance)"
            )
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError(f"schedule: the step phases' `at` must increase, got {steps}")
        if any(b <= a for a, b in itertools.pairwise(delays)):
            raise ValueError(f"schedule: the onset phases' `delay` must increase, got {delays}")
        return self

    @property
    def uses_onset(self) -> bool:
        return any(p.at == ONSET for p in self.schedule)


class LossConfig(_Section):
    objective: _mode(PolicyObjective) = PolicyObjective.ppo
    eps_low: float = Field(default=0.2, ge=0.0)
    eps_high: float = Field(default=0.2, ge=0.0)
    """eps_high > eps_low is DAPO clip-higher."""
    dual_clip: float | None = Field(default=None, gt=1.0)
    """Dual-clip bound c (> 1) for negative advantages; None disables it. At c <= 1 the bound would cut
    below the ordinary clip and change the loss of every negative sample."""
    kl_beta: float = Field(default=0.0, ge=0.0)
    """KL-to-reference coefficient; 0 loads no reference model."""
    kl_estimator: _mode(KLEstimator) = KLEstimator.k3
    entropy_coef: float = 0.0
    aggregation: _mode(Aggregation) = Aggregation.token_mean
    max_len_norm: int | None = Field(default=None, ge=1)
    """Constant length for seq_mean_token_sum_norm (the loss divides by it); default rollout.max_new_tokens."""
    logits_chunk: int = Field(default=0, ge=0)
    """Compute logits/log-softmax over this many tokens at a time (0: all at once); bounds [B, T, V] memory."""


class OptimConfig(_Section):
    lr: float = Field(default=1e-5, gt=0.0)
    schedule: _mode(Schedule) = Schedule.constant
    warmup_steps: int = Field(default=0, ge=0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    b1: float = Field(default=0.9, ge=0.0, lt=1.0)
    """AdamW first-moment decay, 0 <= b1 < 1."""
    b2: float = Field(default=0.999, ge=0.0, lt=1.0)
    """AdamW second-moment decay, 0 <= b2 < 1 (1 would never forget, and its bias correction divides by 0)."""
    eps: float = Field(default=1e-8, gt=0.0)
    """AdamW denominator term, > 0 (0 divides by zero where a gradient is 0)."""
    max_grad_norm: float = Field(default=1.0, ge=0.0)
    """Global-norm clip; 0 disables it."""
    micro_batches: int = Field(default=1, ge=1)
    """Gradient accumulation steps within one optimizer step."""
    mini_batches: int = Field(default=1, ge=1)
    """Optimizer steps per epoch over one rollout batch."""
    epochs: int = Field(default=1, ge=1)
    """Passes over one rollout batch (PPO-style reuse)."""


class CheckpointConfig(_Section):
    every: int = Field(default=0, ge=0)
    """Save every N steps (0: only at the end, or when stopped by SIGTERM/SIGINT)."""
    keep: int = Field(default=3, ge=1)
    """Keep the latest N checkpoints (plus the best one, when best_metric is set)."""
    best_metric: str | None = None
    """Also keep the best checkpoint by this logged metric (e.g. eval/correct_frac); checkpoints are
    also written at the steps that measure it."""
    best_mode: _mode(BestMode) = BestMode.max
    async_save: bool = True
    """Write checkpoints in a background thread (training goes on once the arrays are on the host)."""


class WandbMode(str, enum.Enum):
    online = "online"
    offline = "offline"  # written under logging.wandb.dir; `wandb sync` uploads it later
    disabled = "disabled"  # keep the section but log nothing (the package is not needed)


class WandbConfig(_Section):
    project: str
    name: str | None = None
    """The W&B run's display name (None: run.name)."""
    entity: str | None = None
    group: str | None = None
    tags: list[str] = Field(default_factory=list)
    mode: _mode(WandbMode) = WandbMode.online
    dir: str | None = None
    """A local folder for W&B's own files (None: the run directory, or its local cache for gs://)."""


class LoggingConfig(_Section):
    tensorboard: bool = True
    wandb: WandbConfig | None = None
    """Weights & Biases logging (needs `pip install 'rlvr-jax[wandb]'`): the metrics rows, sampled
    completions as tables, the resolved config; a resumed run continues the same W&B run."""
    dynamics_every: int = Field(default=20, ge=1)
    """Post-update probability-mass pass (two extra forwards) every N steps; the per-sign statistics of
    the sampled tokens are logged every step regardless."""
    probe_every: int = Field(default=10, ge=1)
    probe_file: str | None = None
    """Probe set (YAML/JSONL: prompts, decision positions, token classes; see rlvr_jax/probe.py). Default:
    the task's own probe (toy_strategy: pi(S1), pi(S2), pi(S3) at the first response token), else none."""
    rollouts_every: int = Field(default=10, ge=0)
    """Log every N-th step's sampled completions (token ids, text, reward) to rollouts.jsonl, TensorBoard
    text and W&B tables (0: never)."""
    rollouts_per_step: int = Field(default=4, ge=0)
    """Completions logged per such step: the first sample of each of the step's first N prompts (0: all)."""
    stage_window: int = Field(default=2, ge=1)
    """Online stage detector (rlvr_jax/stages.py OnlineDetector): the rare class must rise at each of the
    last N probe points while the leader is lower than N probe points earlier."""
    stage_rare_ratio: float = Field(default=0.1, gt=0.0, lt=1.0)
    """A class is rare if its base probability is below this times the base's largest class probability."""
    stage_min_rise: float = Field(default=0.1, ge=0.0)
    """The rare class's rise over the window must be at least this fraction of its value at the window's start."""
    progress_bar: bool = True
    block_each_step: bool = False
    """Wait for each update to finish before the step ends, so time/step_s and time/rollout_s split a step
    exactly (benchmarks); otherwise the update runs on while the host finishes the step's bookkeeping."""


class EvalConfig(_Section):
    every: int = Field(default=0, ge=0)
    """Evaluate every N steps (0: only at the start and the end)."""
    split: str = "test"
    """The evaluation split (a registered task's split, or a split of an hf datasets folder)."""
    path: str | None = None
    """With file sources: the held-out files, read with the data.* column settings (else eval.split of an
    hf datasets folder)."""
    n: int = Field(default=64, ge=1)
    """Samples per problem for pass@k."""
    temperature: float = Field(default=0.6, ge=0.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_problems: int | None = Field(default=None, ge=1)
    """Evaluate the first N problems of the split (None: all of them)."""
    samples_per_pass: int = Field(default=16, ge=1)
    """Samples per problem drawn in one sampler call: n is drawn in n / samples_per_pass passes, so n must
    be a multiple of it (an n at most samples_per_pass is drawn in one pass of n)."""
    batch_problems: int = Field(default=16, ge=1)
    """Problems per sampler call (rows = batch_problems * samples_per_pass)."""
    cache_dir: str | None = None
    """A local folder shared by runs that start from the same policy: the step-0 (base-policy) evaluation
    is stored there under a digest of everything it depends on (weights, these settings, the held-out
    prompts, the rewards, the seed; rlvr_jax/eval_cache.py) and read by the other runs instead of being
    evaluated again. `rlvr-jax sweep` sets it to OUT/eval_cache. None: every run evaluates its own."""

    @field_validator("cache_dir")
    @classmethod
    def _local_cache(cls, value: str | None) -> str | None:
        if value is not None and "://" in value:
            raise ValueError(
                f"eval.cache_dir={value!r}: the base-evaluation cache is a local folder; give a local path"
            )
        return value

    @model_validator(mode="after")
    def _passes_fit(self) -> EvalConfig:
        if self.n > self.samples_per_pass and self.n % self.samples_per_pass:
            raise ValueError(
                f"n={self.n} is not a multiple of samples_per_pass={self.samples_per_pass}: n is drawn in passes of "
                f"samples_per_pass; use n={self.n - self.n % self.samples_per_pass} or "
                f"{self.n + self.samples_per_pass - self.n % self.samples_per_pass}, or a samples_per_pass dividing {self.n}"
            )
        return self


class Config(_Section):
    run: RunConfig = RunConfig()
    model: ModelConfig = ModelConfig()
    mesh: MeshConfig = MeshConfig()
    data: DataConfig = DataConfig()
    warmstart: WarmstartConfig = WarmstartConfig()
    rollout: RolloutConfig = RolloutConfig()
    reward: RewardConfig = RewardConfig()
    advantage: AdvantageConfig = AdvantageConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    logging: LoggingConfig = LoggingConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _data_source_fits(self) -> Config:
        files = self.data.source != DataSource.task
        if files and self.data.source != DataSource.python and not self.data.path:
            raise ValueError(f"data.source={self.data.source.value} reads files: set data.path (a file, glob or URL)")
        if not files and self.data.path:
            raise ValueError("data.path is set but data.source is task: set data.source=jsonl|parquet|hf")
        if not files and self.eval.path:
            raise ValueError("eval.path is for file sources: set data.source=jsonl|parquet|hf, or drop eval.path")
        if self.advantage.uses_onset and files and not self.logging.probe_file:
            raise ValueError(
                f"advantage.schedule: at: {ONSET} needs the probe the stage detector reads; a file dataset has "
                "none of its own: set logging.probe_file"
            )
        if files and self.data.task_args:
            raise ValueError(
                f"data.task_args are a registered task's dataset parameters; data.source={self.data.source.value} "
                "reads files, which take none: drop data.task_args"
            )
        return self

    @model_validator(mode="after")
    def _batches_fit(self) -> Config:
        """Settings that each validate but do not work together; every such problem is one line."""
        problems = []
        rows = self.data.prompts_per_step * self.rollout.group_size
        parts = self.optim.mini_batches * self.optim.micro_batches
        if rows % parts:
            problems.append(
                f"data.prompts_per_step * rollout.group_size = {self.data.prompts_per_step} * "
                f"{self.rollout.group_size} = {rows} rollouts per step do not split into optim.mini_batches * "
                f"optim.micro_batches = {self.optim.mini_batches} * {self.optim.micro_batches} = {parts} equal "
                f"parts; make that product a divisor of {rows} (the nearest: {_divisors_near(rows, parts)})"
            )
        # With G = 1 GRPO / Dr.GRPO give 0 to every rollout, RLOO and the unbiased std divide by G - 1 = 0
        # (verl instead falls back to mean 0, std 1). Every advantage.schedule phase too: a phase that
        # cannot run would otherwise stop the run when it starts.
        named = [("advantage.estimator", self.advantage.estimator)] + [
            (f"advantage.schedule.{i}.estimator", p.estimator) for i, p in enumerate(self.advantage.schedule)
        ]
        g = self.rollout.group_size
        for key, estimator in named:
            if estimator in GROUP_RELATIVE and g < 2:
                unbiased = " (std=unbiased divides by G - 1 = 0)" if self.advantage.std == StdMode.unbiased else ""
                problems.append(
                    f"rollout.group_size={g} with {key}={estimator.value}: the estimator compares each sample with "
                    f"the others of its prompt's group and needs rollout.group_size >= 2, got {g}{unbiased}; set "
                    f"rollout.group_size >= 2 (or {key}=nsr|psr|w_reinforce)"
                )
        processes = self.mesh.distributed.num_processes
        if processes is not None and self.data.prompts_per_step % processes:
            problems.append(
                f"data.prompts_per_step={self.data.prompts_per_step} does not divide over "
                f"mesh.distributed.num_processes={processes}: each process reads an equal share; make it a "
                f"multiple of {processes}"
            )
        if problems:
            raise ValueError("\n  ".join(problems))
        return self

    @property
    def run_dir(self) -> epath.Path:
        """run.run_dir (a local folder or a gs:// URL), default runs/<run.name>; local ones made absolute."""
        return as_path(self.run.run_dir or f"runs/{self.run.name}")


def _divisors_near(rows: int, parts: int) -> str:
    """The divisors of `rows` closest to `parts`, as a hint: "4 or 8"."""
    divisors = [d for d in range(1, rows + 1) if rows % d == 0]
    below = max((d for d in divisors if d < parts), default=1)
    above = min((d for d in divisors if d > parts), default=rows)
    return f"{below} or {above}" if above != below else str(below)


# --- loading ------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-5` as a float (YAML 1.1 wants `1.0e-5`, a common trap)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$"),
    list("-+0123456789."),
)
# Integers must stay integers: re-register int first so "3" resolves to int, not float.
_Loader.yaml_implicit_resolvers = {
    k: sorted(v, key=lambda tag_re: tag_re[0] != "tag:yaml.org,2002:int")
    for k, v in _Loader.yaml_implicit_resolvers.items()
}


# The configs, recipes and probe files that ship with the package (package data).
PACKAGED = Path(__file__).resolve().parent / "configs"


def packaged_names(folder: str = "") -> list[str]:
    """Names of the packaged YAML files under `folder` ("" for the run configs, "recipes", "probes")."""
    return sorted(p.stem for p in (PACKAGED / folder).glob("*.yaml"))


def resolve_config(path: str | Path, folder: str = "") -> Path:
    """A YAML file by path when it exists, else the packaged file of that name: `toy_strategy`,
    `recipes/qwen2.5-math-1.5b_math_grpo`, or a repository path such as `configs/toy_strategy.yaml`
    (configs moved into the package; old paths keep working from anywhere)."""
    given = Path(path)
    if given.is_file():
        return given
    name = given.as_posix().removeprefix("rlvr_jax/").removeprefix("configs/")
    name = name.removeprefix(f"{folder}/") if folder else name
    candidate = PACKAGED / folder / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    if candidate.is_file():
        return candidate
    known = ", ".join(packaged_names(folder))
    raise ConfigError(f"config file {path} does not exist (packaged {folder or 'configs'}: {known})")


def parse_yaml_value(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config; a top-level `base: other.yaml` (relative to this file) is loaded first and
    this file's keys are merged over it, so recipes share one base instead of copies."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.resolve() in seen:
        raise ConfigError(f"config file {path}: `base` chain loops back to itself")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"config file {path}: `base` must be a file name, got {base!r}")
    return _deep_merge(_read_yaml(path.parent / base, seen + (path.resolve(),)), data)


def _deep_merge(under: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(under)
    for key, value in over.items():
        both_maps = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _deep_merge(out[key], value) if both_maps else value
    return out


def apply_override(tree: dict[str, Any], override: str) -> dict[str, Any]:
    """Return a copy of `tree` with one `a.b.c=value` override applied (value parsed as YAML)."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} must look like section.key=value")
    parts = key.strip().split(".")
    out = dict(tree)
    node = out
    for part in parts[:-1]:
        child = node.get(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
        node[part] = dict(child)
        node = node[part]
    try:
        node[parts[-1]] = parse_yaml_value(raw)
    except yaml.YAMLError as err:
        problem = str(getattr(err, "problem", None) or err).splitlines()[0]
        raise ConfigError(
            f"override {override!r}: the value is not valid YAML ({problem}); quote it, e.g. {key.strip()}='\"{raw}\"'"
        ) from None
    return out


def _section_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        section = _section_type(getattr(field, "annotation", None))
        if section is None:
            return None if field is None else model
        model = section
    return model


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """The section a field holds: `Section`, or `Section | None` for an optional one (logging.wandb)."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _describe(err: dict[str, Any]) -> str:
    loc = [str(p) for p in err["loc"]]
    dotted = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        parent = _section_at(loc[:-1])
        valid = sorted(parent.model_fields) if parent else []
        close = difflib.get_close_matches(loc[-1], valid, n=1)
        hint = f" (did you mean {'.'.join(loc[:-1] + close)!r}?)" if close else ""
        return f"unknown config key {dotted!r}{hint}; valid keys here: {', '.join(valid)}"
    if err["type"] == "value_error":  # a cross-field check: its message names the keys and the fix
        message = str(err["msg"]).removeprefix("Value error, ")
        if not dotted:
            return message
        # A section's own check writes its keys bare (n=24): name them in full (eval.n=24).
        section = _section_at(loc)
        fields = sorted(section.model_fields if section else (), key=len, reverse=True)
        named = re.sub(rf"(?<![\w.])({'|'.join(fields)})(?==)", rf"{dotted}.\1", message) if fields else message
        return named if named != message else f"{dotted}: {message}"
    return f"config key {dotted!r}: {err['msg']} (got {err.get('input')!r})"


# Keys that existed once: a config that still sets one gets this message instead of "unknown key".
REMOVED_KEYS = {
    "logging.every": "metrics.jsonl has a row every step; delete the key",
}


def _removed_keys(tree: Mapping[str, Any]) -> list[str]:
    flat = flatten(tree)
    return [f"config key {key!r} was removed: {why}" for key, why in REMOVED_KEYS.items() if key in flat]


def _invalid(lines: Sequence[str]) -> ConfigError:
    """One problem is one line; several are a count, then one line each."""
    lines = [line for text in lines for line in text.split("\n  ")]
    if len(lines) == 1:
        return ConfigError(f"invalid config: {lines[0]}")
    return ConfigError(f"invalid config ({len(lines)} problems):\n  " + "\n  ".join(lines))


def validate(tree: dict[str, Any]) -> Config:
    removed = _removed_keys(tree)
    if removed:
        raise _invalid(removed)
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise _invalid([_describe(e) for e in err.errors()]) from None


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config (a file, or a packaged config by name: see `resolve_config`), apply dotted
    overrides in order, validate. No path: the defaults of every field."""
    tree = _read_yaml(resolve_config(path)) if path is not None else {}
    for override in overrides:
        tree = apply_override(tree, override)
    return validate(tree)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config; loading it back gives an equal Config."""
    write_text_atomic(as_path(path), to_yaml(cfg))


# --- resuming -------------------------------------------------------------------------------------

# Keys that say how long, where and on what devices a run goes, and what it writes down: never a number
# in its results (a resumed run may change them; a sweep counts a finished run with other values).
BOOKKEEPING = (
    "run.steps",
    "run.name",
    "run.run_dir",
    "run.compile_cache",
    "logging.",
    "checkpoint.",
    "mesh.",
    "reward.workers",
    "eval.cache_dir",  # where the base evaluation is shared, not what it is
    "data.data_dir",  # where the datasets are cached: their content follows from the other data.* keys
)
# Keys a resumed run may change freely: they touch neither the saved state nor the training maths
# (a mesh change re-shards the state on restore; model.path/tokenizer may move, their content is verified).
HARMLESS_ON_RESUME = (
    *BOOKKEEPING,
    "eval.",
    "reward.timeout_s",
    "data.manual_dir",
    "model.path",
    "model.tokenizer",
    "model.remat",
    "model.allow_nonfinite",
)
STAGE_DETECTOR = ("logging.stage_", "logging.probe_")
# Keys that change what the saved state is (shapes, dtypes, the initial policy): never resumable.
STATE_DEFINING = ("model.arch", "model.param_dtype", "model.scan_layers", "warmstart.", "optim.max_grad_norm")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _overlay(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """`top` over `base`, section by section (a saved section replaces a default leaf, e.g. arch {})."""
    out = dict(base)
    for key, value in top.items():
        below = out.get(key)
        both = isinstance(value, Mapping) and isinstance(below, Mapping)
        out[key] = _overlay(below, value) if both else value
    return out


@dataclasses.dataclass(frozen=True)
class ConfigChanges:
    """Differences between a checkpoint's config and the config of the run resuming it."""

    harmless: list[str]
    trajectory: list[str]  # change the maths from here on: allowed only when asked
    state: list[str]  # change the saved state itself: never allowed

    @staticmethod
    def between(saved: Mapping[str, Any], cfg: Config) -> ConfigChanges:
        # A key added since the checkpoint was written counts as its default there: a newer rlvr-jax
        # resumes an older run unless the new key is set to something else.
        old = flatten(_overlay(Config().model_dump(mode="json"), saved))
        new = flatten(cfg.model_dump(mode="json"))
        lines: dict[str, list[str]] = {"harmless": [], "trajectory": [], "state": []}
        for key in sorted(old.keys() | new.keys()):
            if old.get(key, "<unset>") == new.get(key, "<unset>"):
                continue
            # The stage detector's settings decide when an onset phase starts: then they change the maths.
            steers = key.startswith(STAGE_DETECTOR) and cfg.advantage.uses_onset
            kind = (
                "harmless"
                if key.startswith(HARMLESS_ON_RESUME) and not steers
                else "state"
                if key.startswith(STATE_DEFINING)
                else "trajectory"
            )
            lines[kind].append(f"{key}: {old.get(key, '<unset>')!r} -> {new.get(key, '<unset>')!r}")
        return ConfigChanges(**lines)
