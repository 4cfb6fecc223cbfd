"""pytest plugin (pytest.ini: ``-p longest_first``): test files holding ``slow`` tests are
collected first, so that ``-n 2 --dist loadfile`` starts them at once instead of ending on
one long file while the other worker idles. Otherwise the order is pytest's."""


def pytest_collection_modifyitems(items):
  slow_files = {item.path for item in items if item.get_closest_marker("slow")}
  items.sort(key=lambda item: item.path not in slow_files)  # stable: files stay together
