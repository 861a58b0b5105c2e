"""Module ownership (docs/design.md): stage modules never import each other; edges are parsed from source."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rlvr_jax"

# module -> the rlvr_jax modules it may import (docs/design.md's table); the orchestrators import anything.
ALLOWED = {
    "config": {"storage"},
    "storage": set(),
    "types": {"config"},
    "mesh": {"config"},
    "model": {"config", "mesh", "model", "storage"},
    "tokenizer": {"config", "types", "storage"},
    "data": {"config", "types", "tokenizer", "data", "distributed"},
    "rollout": {"config", "types", "mesh", "model"},
    "advantage": {"config", "types"},
    "bandit": {"config", "types", "advantage"},
    "loss": {"config", "types", "model"},
    "update": {"config", "types", "mesh", "loss", "model", "dynamics"},
    "dynamics": {"types", "model"},
    "writers": {"config", "distributed", "storage"},
    "wandb_log": {"config", "storage"},
    "sft": {"config", "types", "loss", "tokenizer"},
    "rewards": {"config", "types", "rewards"},
    "checkpoint": {"config", "types", "mesh", "model", "distributed", "storage"},
    "preemption": set(),
    "compile_cache": set(),
    "boundary": set(),
    "stages": set(),
    "schedule": {"config"},
    "distributed": {"mesh", "config"},
    "plan": {"config", "mesh", "model"},
    "rng": set(),
    "eval_cache": {"rewards", "storage"},  # the reward functions it keys on; atomic writes
    # a task names its data builder, verifier and probe; the toy task imports its warm start lazily
    "tasks": {"config", "data", "rewards", "probe", "storage", "tasks", "warmstart"},
}
# The orchestrators: the step (its stages), the hooks and loop around it, the commands, the Python API and
# the study runner.
ORCHESTRATORS = {"api", "cli", "loop", "step", "hooks", "summary", "warmstart", "evaluate", "probe", "plots", "sweep"}
# Modules that may name a task: the tasks themselves, their data builders and verifiers, the toy's
# warm start and bandit model, and the config (whose defaults are the toy experiment).
TASK_OWNERS = {
    "tasks",
    "rewards",
    "data/toy_strategy.py",
    "data/arithmetic.py",
    "data/official.py",
    "warmstart.py",
    "bandit.py",
    "rewards/verifiers.py",
    "rewards/__init__.py",
    "config.py",
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rlvr_jax"):
            parts = node.module.split(".")
            found.add(parts[1] if len(parts) > 1 else node.names[0].name)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("rlvr_jax."))
    return found


def test_import_edges_follow_the_design():
    seen = set()
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        owner = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if owner in ORCHESTRATORS or owner == "__init__":
            continue
        assert owner in ALLOWED, f"{rel}: new module; add its allowed imports to tests/test_structure.py"
        bad = _imports(path) - ALLOWED[owner]
        assert not bad, f"{rel} imports {sorted(bad)}, outside its allowed edges {sorted(ALLOWED[owner])}"
        seen.add(owner)
    assert {"config", "mesh", "model", "rollout"} <= seen


def test_no_scattered_jit_decorators():
    """jit happens at step boundaries (make_sampler, the update step), not as library decorators."""
    for path in PACKAGE.rglob("*.py"):
        assert "@jax.jit" not in path.read_text(), f"{path.relative_to(PACKAGE)} decorates with @jax.jit"


def _string_constants(path: Path) -> set[str]:
    """String literals of a module, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    }


def test_no_generic_module_names_a_task():
    """Task-specific behaviour comes from the Task (rlvr_jax/tasks), never from a name test elsewhere."""
    from rlvr_jax.tasks import task_names

    names = set(task_names()) | {"S1", "S2", "S3", "hard", "easy"}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.split("/")[0] in TASK_OWNERS or rel in TASK_OWNERS:
            continue
        named = _string_constants(path) & names
        assert not named, f"{rel} names task-specific strings {sorted(named)}: ask the Task instead"
