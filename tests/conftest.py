"""Test order: the heaviest files first.

pytest-xdist (`--dist loadfile --no-loadscope-reorder`, pytest.ini) hands whole files to
its two workers in this order, two each to start with, then one at a time as each gets
free: a long end-to-end file handed out last would run alone at the end while the other
worker idles. Measured cost of the heavy files on 2 cores: test_r1_zero about 390 s,
test_r1_pipeline and test_r1_zero_learns about 170 s each, test_multihost about 75 s.
"""
HEAVY_FIRST = ("test_r1_zero.py", "test_r1_pipeline.py", "test_multihost.py", "test_r1_zero_learns.py",
               "test_notebooks.py", "test_sharding.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the others keep their order
