"""`rlvr-jax sweep`: one config x seeds x combinations of overrides, run, resumed and tabulated (docs/sweep.md).

spec.py     the study: seeds, combinations (named or a grid), the sweep YAML file
plan.py     each run's overrides, and the warm-started base policies the runs share
runner.py   data and base policies first, then the runs, in parallel processes; resumable
stats.py    Wilson interval, mean / sd, median / range
table.py    per-run numbers from the run folders, the per-combination table (Markdown + JSON)
figures.py  pi(class) bands over seeds, the stage-2 fractions with their intervals
prepare.py  the subprocess that builds a dataset or a base policy
pin.py      starts a process pinned to its slot of CPUs
"""
