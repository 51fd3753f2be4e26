"""A directory's contents as a value to compare: did a call leave it untouched?"""
import hashlib
import os


def snapshot(directory):
    """Every file path under `directory` with the sha256 of its bytes."""
    out = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            out[os.path.relpath(os.path.join(root, name), directory)] = "dir"
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return out
