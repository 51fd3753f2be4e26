"""Test order: the heaviest files first.

pytest-xdist (`--dist loadfile`, pytest.ini) hands whole files to its two workers in
collection order; a long end-to-end file collected last would run alone at the end while
the other worker idles.
"""
HEAVY_FIRST = ("test_r1_zero.py", "test_r1_pipeline.py", "test_r1_zero_learns.py", "test_multihost.py",
               "test_sharding.py", "test_notebooks.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the others keep their order
