"""The command-line entry of the experiment modules: `python -m experiments.<name> --config.x=y`."""
from __future__ import annotations

import difflib
import json
import logging
import signal
import sys
from typing import Callable, Mapping, Sequence

import ml_collections
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from r1jax import distributed
from r1jax.checkpoint import (CheckpointDirectoryError, CheckpointWriteError, DamagedCheckpointError,
                              IncompatibleCheckpointError, check_directory, is_disk_full)
from r1jax.data.rejection import OutputDirError
from r1jax.models.weights import CheckpointError
from r1jax.pipelines.settings import ConfigError

# Errors in what the user gave (a config, a checkpoint to start from or resume, a workdir
# holding another run's data), found with nothing changed on disk: shown as `error: <message>`.
USER_ERRORS = (ConfigError, CheckpointError, IncompatibleCheckpointError, DamagedCheckpointError, OutputDirError,
               CheckpointDirectoryError)

# The exit statuses of a command, as a scheduler reads them (0: the run finished, its summary printed).
FAILED = 1  # e.g. the disk filled up: `error: <what to fix>`; once fixed, the same command resumes
BAD_INPUT = 2  # a USER_ERRORS refusal, nothing changed on disk
# SIGTERM stopped the run (its progress is checkpointed): 128 + SIGTERM, the status of a process
# that the signal killed, which is what a SIGTERM outside a training loop ends with too.
PREEMPTED = 128 + signal.SIGTERM

Shrink = Callable[[ml_collections.ConfigDict], ml_collections.ConfigDict]


def _runlocal_requested(argv) -> bool:
    for arg in argv:
        if arg in ("--config.runlocal", "--config.runlocal=True", "--config.runlocal=true", "--config.runlocal=1"):
            return True
    return False


def unknown_override(config: ml_collections.ConfigDict, argv: Sequence[str]) -> str | None:
    """What is wrong with the first `--config.<a.b.c>=...` of `argv` that names no field of `config`
    (None: they all do). ml_collections would stop on it with a traceback instead."""
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        section, where = config, "config"
        for name in arg[len("--config."):].split("=", 1)[0].split("."):
            if not isinstance(section, ml_collections.ConfigDict):
                return f"{where} is a value, not a section: it has no field {name!r}"
            if name not in section:
                fields = sorted(section.keys())
                close = difflib.get_close_matches(name, fields, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                return f"{where} has no field {name!r}{hint}; its fields are {', '.join(fields)}"
            section, where = section[name], f"{where}.{name}"
    return None


def run(pipeline: Callable[..., dict], config: ml_collections.ConfigDict, runlocal: Shrink | None = None) -> None:
    """Parse `--config.<field>=<value>` overrides of `config` (an unknown field is an error that
    names it), run `pipeline(config)` and print what it returns as JSON (exit status 0).

    A bad config (an unknown field, a `ConfigError` that the pipeline raises before it starts
    working), a bad starting checkpoint, a workdir whose checkpoints cannot be resumed or that
    holds a symbolic link loop ends the command with `error: ...` and exit status 2, without a
    traceback. A disk that fills up ends it with `error: ...` naming the directory and exit
    status 1. A preempted run (SIGTERM; `pipeline` returns `{"stopped": <stage>}`) says so in
    one line and exits with status 143 (128 + SIGTERM): not done; the same command resumes it.

    Several hosts: run the same command on every host. `--coordinator_address=HOST:PORT
    --num_processes=N --process_id=I` join them (needed off a cluster, e.g. several processes
    on one machine); on TPU VM slices, SLURM and Open MPI JAX finds them itself. Process 0
    prints and writes logs, metrics, plots and exports.

    `--config.runlocal=True` (big_vision's convention) starts from `runlocal(config)`, the
    experiment's smoke setting (small batch, lengths and steps: about a minute on a CPU);
    the other overrides apply on top of it. The flag is defined here, not when an experiment
    module is imported, so that one experiment can import another's `get_config`.
    """
    if "runlocal" in config and _runlocal_requested(sys.argv[1:]):
        if runlocal is None:
            sys.exit("error: this experiment has no runlocal setting")
        config = runlocal(config)
    problem = unknown_override(config, sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    config_flag = config_flags.DEFINE_config_dict("config", config, lock_config=True)
    join = launch_flags()

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments {argv[1:]}; use --config.<field>=<value>")
        join()
        workdir = config_flag.value.get("workdir")
        try:
            if workdir:  # before anything is written in it (the recipe refuses an empty one)
                check_directory(workdir)
            result = pipeline(config_flag.value)
        except USER_ERRORS as error:  # the message says what to change; a traceback would bury it
            print(f"error: {error}", file=sys.stderr)
            sys.exit(BAD_INPUT)
        except Exception as error:  # a full disk, during a checkpoint save or any other write
            if not is_disk_full(error):
                raise
            # a CheckpointWriteError says where, and from which step the relaunch resumes
            message = str(error) if isinstance(error, CheckpointWriteError) else (
                f"{getattr(error, 'filename', None) or workdir}: no space left on its device; free space there, "
                "then relaunch the same command to resume")
            print(f"error: {message}", file=sys.stderr)
            sys.exit(FAILED)
        stopped = result.get("stopped") if isinstance(result, Mapping) else None
        if stopped:
            print(f"preempted (SIGTERM): the run stopped at stage {stopped}, its progress saved in {workdir}; "
                  f"relaunch the same command to resume (exit status {PREEMPTED}: not done)", file=sys.stderr)
            sys.exit(PREEMPTED)
        if distributed.is_primary():
            print(json.dumps(result, indent=2))

    app.run(main)


def launch_flags() -> Callable[[], None]:
    """Define `--coordinator_address`, `--num_processes` and `--process_id`; returns `join()`.

    `join()`, first thing in `main`, joins the processes (`r1jax.distributed.initialize`: the
    flags, or the cluster's own environment) and sets the logging: Orbax and TFDS log
    every file they touch, so only their errors; our progress from process 0 only.
    """
    coordinator = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, for several "
                                      "processes off a cluster (TPU VMs, SLURM and Open MPI are detected)")
    num_processes = flags.DEFINE_integer("num_processes", None, "how many processes take part")
    process_id = flags.DEFINE_integer("process_id", None, "this process's index, 0 .. num_processes - 1")
    heartbeat = flags.DEFINE_integer("heartbeat_timeout_seconds", distributed.HEARTBEAT_TIMEOUT_SECONDS,
                                     "after how long without news from a process the others stop with an error")

    def join():
        try:  # before any other JAX call
            distributed.initialize(coordinator.value, num_processes.value, process_id.value,
                                   heartbeat_timeout_seconds=heartbeat.value)
        except ValueError as error:
            raise app.UsageError(str(error)) from None
        absl_logging.set_verbosity(absl_logging.ERROR)
        logging.getLogger("absl").addFilter(_reported_disk_full)
        logging.getLogger("r1jax").setLevel(logging.INFO if distributed.is_primary() else logging.WARNING)

    return join


def _reported_disk_full(record: logging.LogRecord) -> bool:
    """A logging filter: Orbax logs a save that failed for want of space, with its traceback, from
    each of its threads before the save raises; `run` reports it once, in one line."""
    return not (record.exc_info and is_disk_full(record.exc_info[1]))
