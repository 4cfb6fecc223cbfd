"""pytest plugin (pytest.ini: ``-p longest_first``): the longest test files are collected
first, longest first, so that ``-n 2 --dist loadfile --no-loadscope-reorder`` hands them
out at once (the longest-processing-time rule) instead of ending on one long file while
the other worker idles. xdist's default reorder (by number of tests per file) would undo
this (the same 641 tests, empty compilation cache, 2 cores: 9:47 with xdist's reorder,
8:38 with this order).

Order: the files of `LONGEST` (their test time in a full run with an empty compilation
cache, 2 cores: seconds in the comment), then the other files holding ``slow`` tests,
then the rest; pytest's order otherwise. A file missing from `LONGEST` only loses its
place, nothing else."""

LONGEST = (
    "test_seg_train.py",  # 154
    "test_reliability.py",  # 99
    "test_plan.py",  # 89
    "test_two_stage_train.py",  # 84
    "test_method_steps.py",  # 50
    "test_multihost.py",  # 46
    "test_seg_configs.py",  # 44
    "test_torch_interop.py",  # 42
    "test_device_data.py",  # 41
    "test_train.py",  # 37
    "test_notebook.py",  # 30
    "test_compare.py",  # 30
    "test_failures.py",  # 26
    "test_seg_methods.py",  # 25
)


def _rank(item, slow_files) -> tuple[int, int]:
  name = item.path.name
  if name in LONGEST:
    return 0, LONGEST.index(name)
  return (1 if item.path in slow_files else 2), 0


def pytest_collection_modifyitems(items):
  slow_files = {item.path for item in items if item.get_closest_marker("slow")}
  items.sort(key=lambda item: _rank(item, slow_files))  # stable: files stay together
