"""`python -m rlvr_jax.cli ...` runs the `rlvr-jax` command."""

import sys

from rlvr_jax.cli import main

sys.exit(main())
