"""The command-line entry of the experiment modules: `python -m experiments.<name> --config.x=y`."""
from __future__ import annotations

import json
import logging
import sys
from typing import Callable

import ml_collections
from absl import app
from absl import logging as absl_logging
from ml_collections import config_flags

Shrink = Callable[[ml_collections.ConfigDict], ml_collections.ConfigDict]


def _runlocal_requested(argv) -> bool:
    for arg in argv:
        if arg in ("--config.runlocal", "--config.runlocal=True", "--config.runlocal=true", "--config.runlocal=1"):
            return True
    return False


def run(pipeline: Callable[..., dict], config: ml_collections.ConfigDict, runlocal: Shrink | None = None) -> None:
    """Parse `--config.<field>=<value>` overrides of `config` (an unknown field is an error that
    names it), run `pipeline(config)` and print what it returns as JSON.

    `--config.runlocal=True` (big_vision's convention) starts from `runlocal(config)`, the
    experiment's smoke setting (small batch, lengths and steps: about a minute on a CPU);
    the other overrides apply on top of it. The flag is defined here, not when an experiment
    module is imported, so that one experiment can import another's `get_config`.
    """
    if "runlocal" in config and _runlocal_requested(sys.argv[1:]):
        if runlocal is None:
            raise app.UsageError("this experiment has no runlocal setting")
        config = runlocal(config)
    config_flag = config_flags.DEFINE_config_dict("config", config, lock_config=True)

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments {argv[1:]}; use --config.<field>=<value>")
        # Orbax and TFDS log every file they touch: keep their warnings, and our own progress
        absl_logging.set_verbosity(absl_logging.ERROR)
        logging.getLogger("r1jax").setLevel(logging.INFO)
        print(json.dumps(pipeline(config_flag.value), indent=2))

    app.run(main)
