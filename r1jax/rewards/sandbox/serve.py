"""The launcher process's entry point: `python -I -S -B serve.py <owner pid>`.

Run without site-packages and with nothing on sys.path, it makes this package
importable by path alone (bare `r1jax` and `r1jax.rewards` parents, so their
initialisers, which import numpy and sympy, never run), then serves run requests
(`launcher.serve`) until its owner goes.
"""
import os
import sys
import types

if __name__ == "__main__":
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    for name in ("r1jax", "r1jax.rewards"):
        parent = types.ModuleType(name)
        parent.__path__ = [os.path.join(root, *name.split("."))]
        sys.modules[name] = parent
    from r1jax.rewards.sandbox import launcher
    launcher.serve(int(sys.argv[1]))
