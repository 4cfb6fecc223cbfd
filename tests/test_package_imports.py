"""Layers only look down: the package never reaches up into the config files (``configs/``)
nor edits ``sys.path``; only the entry point, ``afd_jax/main.py``, makes the config files
importable for absl's ``--config``."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY_POINT = os.path.join("afd_jax", "main.py")


def _package_files() -> list[str]:
  out = []
  for dirpath, _, files in os.walk(os.path.join(ROOT, "afd_jax")):
    out += [os.path.relpath(os.path.join(dirpath, f), ROOT) for f in files
            if f.endswith(".py")]
  return sorted(out)


def _reaches_up(path: str) -> list[str]:
  """``'<line>: <what>'`` for each import of ``configs`` and each use of ``sys.path``
  (lazy ones included) in the file at `path`."""
  with open(os.path.join(ROOT, path), encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out += [f"{node.lineno}: import {a.name}" for a in node.names
              if a.name.split(".")[0] == "configs"]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      if node.module.split(".")[0] == "configs":
        out.append(f"{node.lineno}: from {node.module} import ...")
    elif (isinstance(node, ast.Attribute) and node.attr == "path"
          and isinstance(node.value, ast.Name) and node.value.id == "sys"):
      out.append(f"{node.lineno}: sys.path")
  return out


@pytest.mark.parametrize("path", [p for p in _package_files() if p != ENTRY_POINT])
def test_no_module_but_main_imports_configs_or_edits_sys_path(path):
  assert not _reaches_up(path)


def test_the_check_sees_main_py_reaching_up():
  """main.py does put the repository root on sys.path: the scan finds it."""
  assert any("sys.path" in hit for hit in _reaches_up(ENTRY_POINT))
