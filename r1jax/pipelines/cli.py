"""The command-line entry of the experiment modules: `python -m experiments.<name> --config.x=y`."""
from __future__ import annotations

import json
import logging
from typing import Callable

import ml_collections
from absl import app
from absl import logging as absl_logging
from ml_collections import config_flags


def run(pipeline: Callable[..., dict], config: ml_collections.ConfigDict) -> None:
    """Parse `--config.<field>=<value>` overrides of `config` (an unknown field is an error that
    names it), run `pipeline(config)` and print what it returns as JSON.

    The flag is defined here, not when an experiment module is imported, so that one
    experiment can import another's `get_config`.
    """
    config_flag = config_flags.DEFINE_config_dict("config", config, lock_config=True)

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments {argv[1:]}; use --config.<field>=<value>")
        # Orbax and TFDS log every file they touch: keep their warnings, and our own progress
        absl_logging.set_verbosity(absl_logging.ERROR)
        logging.getLogger("r1jax").setLevel(logging.INFO)
        print(json.dumps(pipeline(config_flag.value), indent=2))

    app.run(main)
