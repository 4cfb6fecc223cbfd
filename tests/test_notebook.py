"""experiments/colab.ipynb runs top to bottom on CPU with ``OFFLINE = True``: no install,
no downloads, the digits quickstart at `runlocal` scale, curves, link heatmap, table."""
import base64
import json
import os

import nbclient
import nbformat
import pytest

from config_loading import load
import xla_test_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "experiments", "colab.ipynb")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _with_parameters(nb, **values):
  """Inserts a cell overriding the ``parameters`` cell, after it (as papermill does)."""
  index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
  source = "\n".join(f"{k} = {v!r}" for k, v in values.items())
  cell = nbformat.v4.new_code_cell(source)
  cell.metadata["tags"] = ["injected-parameters"]
  nb.cells.insert(index + 1, cell)
  return nb


def _outputs(cell, kind):
  return [o for o in cell.get("outputs", []) if o.output_type == kind]


def test_repository_copy_has_no_outputs_and_the_papermill_parameters():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(not c.outputs and c.execution_count is None for c in code)
  params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
  assert len(params) == 1 and params[0] is code[0]
  for line in ("OFFLINE = False", "FULL_SCHEDULE = False", "WORKDIR = 'runs/colab'",
               "REPO_URL = "):
    assert line in params[0].source


def _final_eval_top1(workdir):
  """The last ``eval/top1`` the run logged in its metrics.jsonl."""
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [r["eval/top1"] for r in rows if "eval/top1" in r][-1]


@pytest.mark.slow
def test_notebook_runs_offline_on_cpu(digits_data_dir, tmp_path, monkeypatch):
  # The kernel: one CPU device (conftest gives this process 8 fake ones), and XLA's
  # quick compile modes (xla_test_flags.py): two-step runs spend most of their time
  # compiling.
  monkeypatch.setenv("XLA_FLAGS", xla_test_flags.COMPILE_FLAGS)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = _with_parameters(nbformat.read(NOTEBOOK, as_version=4), OFFLINE=True,
                        WORKDIR=str(tmp_path / "colab"), DATA_DIR=digits_data_dir)
  nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": ROOT}}).execute()
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert not any(_outputs(c, "error") for c in code)  # execute() raises on one, too
  stdout = "".join(o.text for c in code for o in _outputs(c, "stream") if o.name == "stdout")
  assert "OFFLINE: using the project" in stdout and "OFFLINE: skipping the CIFAR" in stdout
  # The final table: the three digits runs of the quickstart suite, in order, each with
  # its model and the top-1 of its last evaluation as the run logged it.
  table = [[cell.strip() for cell in line.split("|")[1:-1]]
           for line in stdout.splitlines() if line.startswith("| digits |")]
  suite = load("quickstart.py", "runlocal").runs
  quickstart = tmp_path / "colab" / "quickstart"
  expected = [("teacher", "teacher"), ("baseline", "student"), ("AFD", "student_afd")]
  assert [row[1] for row in table] == [label for label, _ in expected]
  for row, (_, run) in zip(table, expected):
    assert row[2] == suite[run].model.name, (row, run)
    assert row[3] == f"{_final_eval_top1(quickstart / run):.2f}", (row, run)
  assert any("text/markdown" in o.data for o in _outputs(code[-1], "display_data"))
  # Two inline PNGs: the curves and the link heatmap, both written to the workdir.
  images = [base64.b64decode(o.data["image/png"]) for c in code
            for o in _outputs(c, "display_data") if "image/png" in o.data]
  assert len(images) == 2 and all(i.startswith(PNG_MAGIC) and len(i) > 5_000
                                  for i in images)
  afd = tmp_path / "colab" / "quickstart" / "student_afd"
  assert (afd / "curves.png").exists() and (afd / "links.png").exists()


def _install_cell(**parameters):
  """The install cell's code, preceded by the parameters cell and `parameters`."""
  nb = nbformat.read(NOTEBOOK, as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code"]
  install = next(c for c in code if "pip install" in c.source)
  overrides = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
  return "\n".join([code[0].source, overrides, install.source])


class _FakeProcess:
  stdout = ()
  returncode = 0

  def wait(self):
    return 0


def _record_commands(monkeypatch):
  """Replaces the subprocesses the cell starts with a record of their commands."""
  commands = []

  def popen(command, **kwargs):
    commands.append(command)
    return _FakeProcess()
  monkeypatch.setattr("subprocess.Popen", popen)
  monkeypatch.setattr("shutil.which", lambda name: None)  # a CPU runtime
  return commands


def test_placeholder_repo_url_fails_at_once_saying_what_to_set(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # no checkout here
  commands = _record_commands(monkeypatch)
  with pytest.raises(ValueError) as err:
    exec(_install_cell(WORKDIR=str(tmp_path / "w")), {})  # pylint: disable=exec-used
  assert commands == []  # no git clone, no pip
  message = str(err.value)
  assert "REPO_URL" in message and "<org>" in message and "REPO_DIR" in message


def test_install_cell_uses_an_uploaded_checkout(tmp_path, monkeypatch):
  upload = tmp_path / "uploaded_afd_jax"
  upload.mkdir()
  (upload / "requirements.txt").write_text("")
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr("sys.path", list(__import__("sys").path))
  commands = _record_commands(monkeypatch)
  exec(_install_cell(REPO_DIR=str(upload), WORKDIR="w"), {})  # pylint: disable=exec-used
  assert os.getcwd() == str(upload)
  assert len(commands) == 1 and commands[0].endswith("-m pip install -q -r requirements.txt")
  with pytest.raises(ValueError, match="REPO_DIR"):
    exec(_install_cell(REPO_DIR=str(tmp_path / "nothing")), {})  # pylint: disable=exec-used
