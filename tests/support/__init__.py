"""What the tests share that is not a test: tiny models and checkpoints, and the scripts that the
multi-device tests run in fresh processes (`launch("tests.support.<script>", ...)`)."""
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]  # the repository: the cwd of every launched process
