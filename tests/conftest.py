"""Test order: the heaviest files first.

pytest-xdist (`--dist loadfile --no-loadscope-reorder`, pytest.ini) hands whole files to
its two workers in this order, two each to start with, then one at a time as each gets
free: a long end-to-end file handed out last would run alone at the end while the other
worker idles. Measured cost of the heavy files in the default suite on 2 cores (2026-12-07,
with other work on the machine, so about 1.7x the quiet figures): test_r1_zero about 135 s,
test_models 350 s, test_experiments 290 s, test_multihost 130 s, test_attention 125 s.
"""
HEAVY_FIRST = ("test_models.py", "test_experiments.py", "test_r1_zero.py", "test_multihost.py", "test_attention.py",
               "test_train_step.py", "test_sharding.py", "test_grpo_options.py", "test_notebooks.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the others keep their order
