"""`python -m rlvr_jax.sweep.pin CPUS MODULE [ARGS ...]`: run `python -m MODULE ARGS` pinned to CPUS (`0,1`).

The sweep starts each process in a slot of CPUs of its own (rlvr_jax/sweep/runner.py: cpu_slots). The mask
is set here, before the module and JAX are imported, so every thread and child process inherits it;
XLA's CPU thread pools and the BLAS libraries size themselves by it.
"""

import os
import runpy
import sys


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit("usage: python -m rlvr_jax.sweep.pin CPUS MODULE [ARGS ...]")
    cpu_list, module, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    os.sched_setaffinity(0, {int(c) for c in cpu_list.split(",")})
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
