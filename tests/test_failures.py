"""A failure costs seconds and loses nothing: checksummed checkpoints, failed starts that
leave no trace, one ``error:`` line for every mistake, values checked against what they
mean (issue #20)."""
import asyncio
import dataclasses
import errno
import gc
import glob
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import chex
import numpy as np
import pytest

from afd_jax import (checkpointing, faults, methods, models, plan, train, train_state,
                     validation, workdir)
from afd_jax.methods import base, ranges
from config_loading import distill, run_main, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _latest_state(wd, sub="checkpoints"):
  d = os.path.join(wd, sub)
  step = max(int(s) for s in os.listdir(d) if s.isdigit())
  return step, checkpointing.read_numpy(os.path.join(d, str(step), "state"))


def _largest_file(step_dir):
  files = [p for p in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True)
           if os.path.isfile(p)]
  return max(files, key=os.path.getsize)


def _scribble(path, n=4096, seed=0):
  """Overwrites `n` bytes in the middle of `path` with random ones (same size)."""
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.seek(max(0, size // 2 - n // 2))
    f.write(np.random.default_rng(seed).bytes(min(n, size)))


@pytest.fixture(scope="module")
def finished(tiny_run):
  """A finished 8-step run (checkpoints 4 and 8, best/; conftest.py), never modified:
  copy it first."""
  return tiny_run


def _copy(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


# 1. Checksummed checkpoints.

def test_random_bytes_in_a_checkpoint_are_detected_and_the_previous_one_is_used(
    finished, digits_data_dir, tmp_path, caplog):
  wd = _copy(finished, tmp_path / "run")
  _, want = _latest_state(wd)
  assert os.path.exists(os.path.join(wd, "checkpoints", "8", checkpointing.DIGEST_FILE))
  assert os.path.exists(glob.glob(os.path.join(wd, "best", "*", "digest.json"))[0])
  damaged = _largest_file(os.path.join(wd, "checkpoints", "8"))
  _scribble(damaged)
  os.remove(os.path.join(wd, "result.json"))
  train.train_and_evaluate(tiny_config(digits_data_dir), wd)
  rel = os.path.relpath(damaged, os.path.join(wd, "checkpoints", "8"))
  assert f"{rel} does not match its checksum" in caplog.text
  assert "resuming from step 4" in caplog.text
  moved = os.path.join(wd, "checkpoints", "unreadable.8")
  assert os.path.isfile(os.path.join(moved, rel))  # moved aside, never deleted
  chex.assert_trees_all_close(_latest_state(wd)[1], want, rtol=1e-6, atol=1e-6)


def _best_steps(wd):
  return sorted(s for s in os.listdir(os.path.join(wd, "best")) if s.isdigit())


def _damage_best(wd):
  """Scribbles over best/<step>'s largest file. Returns (step, the file relative to
  best/<step>)."""
  [step] = _best_steps(wd)
  damaged = _largest_file(os.path.join(wd, "best", step))
  _scribble(damaged)
  return step, os.path.relpath(damaged, os.path.join(wd, "best", step))


def test_a_finished_run_rerun_moves_a_damaged_best_aside_and_saves_a_new_one(
    finished, digits_data_dir, tmp_path, caplog):
  """The same command again (alone, or in a plan that skips finished runs): the best is
  checked, moved aside with a warning, and the final checkpoint (evaluated at its step)
  becomes the best, which result.json then reports."""
  wd = _copy(finished, tmp_path / "run")
  config = tiny_config(digits_data_dir)
  with open(os.path.join(wd, workdir.CONFIG_FILE)) as f:
    config.data.pipeline = json.load(f)["data"]["pipeline"]  # as the plan resolves it
  assert plan.finished_result(config, wd) is not None
  step, rel = _damage_best(wd)
  assert plan.finished_result(config, wd) is None  # a plan's rerun opens it too
  result = train.train_and_evaluate(config, wd)
  moved = os.path.join(wd, "best", f"unreadable.{step}")
  assert os.path.isfile(os.path.join(moved, rel))  # moved aside, never deleted
  assert (f"best checkpoint {wd}/best/{step} is damaged ({wd}/best/{step}/{rel} does not "
          f"match its checksum") in caplog.text and f"moved to {moved}" in caplog.text
  assert _best_steps(wd) == ["8"]
  checkpointing.verify_digest(os.path.join(wd, "best", "8"))
  assert result["best_top1"] == result["top1"]
  with open(os.path.join(wd, workdir.RESULT_FILE)) as f:
    assert json.load(f) == result
  assert plan.finished_result(config, wd) == result
  assert train.train_and_evaluate(config, wd) == result  # and once more: nothing to do
  shutil.rmtree(os.path.join(wd, "best", "8"))  # deleted: the same
  assert plan.finished_result(config, wd) is None
  assert train.train_and_evaluate(config, wd) == result and _best_steps(wd) == ["8"]


def test_a_resumed_run_moves_a_damaged_best_aside_and_its_next_evaluation_saves_one(
    finished, digits_data_dir, tmp_path, caplog):
  wd = _copy(finished, tmp_path / "run")
  shutil.rmtree(os.path.join(wd, "checkpoints", "8"))  # as if stopped after step 4
  os.remove(os.path.join(wd, workdir.RESULT_FILE))
  step, _ = _damage_best(wd)
  result = train.train_and_evaluate(tiny_config(digits_data_dir), wd)
  assert f"best checkpoint {wd}/best/{step} is damaged" in caplog.text
  assert os.path.isdir(os.path.join(wd, "best", f"unreadable.{step}"))
  assert _best_steps(wd) == ["8"]  # whatever its score: the run had no best any more
  assert result["best_top1"] == result["top1"]
  chex.assert_trees_all_close(_latest_state(wd)[1], _latest_state(finished)[1],
                              rtol=1e-6, atol=1e-6)


def test_a_teacher_whose_bytes_changed_is_refused_before_the_workdir_is_claimed(
    finished, digits_data_dir, tmp_path):
  teacher = _copy(finished, tmp_path / "teacher")
  damaged = _largest_file(glob.glob(os.path.join(teacher, "best", "*"))[0])
  _scribble(damaged)
  wd = tmp_path / "student"
  with pytest.raises(checkpointing.CheckpointError, match="teacher checkpoint .* is "
                     "corrupt: .* does not match its checksum"):
    train.train_and_evaluate(distill(tiny_config(digits_data_dir), teacher), str(wd))
  assert not wd.exists()


def test_digests_cover_every_file_and_name_the_changed_one(tmp_path):
  step = tmp_path / "3"
  (step / "state" / "d").mkdir(parents=True)
  (step / "state" / "d" / "a").write_bytes(b"abc")
  (step / "meta").mkdir()
  (step / "meta" / "metadata").write_text("{}")
  checkpointing.write_digest(str(step))
  checkpointing.verify_digest(str(step))
  (step / "state" / "d" / "a").write_bytes(b"abd")
  with pytest.raises(checkpointing.CheckpointError, match=r"state/d/a does not match"):
    checkpointing.verify_digest(str(step))
  (step / "state" / "d" / "a").unlink()
  with pytest.raises(checkpointing.CheckpointError, match=r"state/d/a is missing"):
    checkpointing.verify_digest(str(step))


# 2. A failed start leaves nothing that blocks the fix.

def test_a_failed_start_leaves_nothing_and_the_corrected_command_runs(
    finished, digits_data_dir, tmp_path):
  wd = tmp_path / "run"
  missing = distill(tiny_config(digits_data_dir, max_steps=1), str(tmp_path / "no_teacher"))
  with pytest.raises(checkpointing.CheckpointError, match="no teacher checkpoint found"):
    train.train_and_evaluate(missing, str(wd))
  assert not wd.exists()
  wrong = distill(tiny_config(digits_data_dir, max_steps=1), finished, teacher="resnet14")
  with pytest.raises(checkpointing.CheckpointError, match="does not fit model 'resnet14'"):
    train.train_and_evaluate(wrong, str(wd))
  assert not wd.exists()
  typo = tiny_config(digits_data_dir, max_steps=1)
  typo.data.name = "digitz"
  with pytest.raises(Exception, match="digitz"):
    train.train_and_evaluate(typo, str(wd))
  assert not wd.exists()
  fixed = distill(tiny_config(digits_data_dir, max_steps=1), finished)
  assert train.train_and_evaluate(fixed, str(wd))["step"] == 1


def test_a_workdir_without_a_checkpoint_is_not_bound_to_its_config(digits_data_dir,
                                                                    tmp_path):
  """What a failed start of an older version left: config.json, empty best/ and
  checkpoints/. The corrected command takes the workdir over."""
  wd = tmp_path / "run"
  other = tiny_config(digits_data_dir, seed=7)
  workdir.check_config(str(wd), other, 0, allow_change=False, write=True)
  (wd / "checkpoints").mkdir()
  (wd / "best").mkdir()
  assert train.train_and_evaluate(tiny_config(digits_data_dir, max_steps=1),
                                  str(wd))["step"] == 1
  # Once it holds a checkpoint, it is bound.
  with pytest.raises(workdir.ConfigMismatchError, match=r"seed: 0 \(workdir\) -> 7"):
    train.train_and_evaluate(tiny_config(digits_data_dir, max_steps=1, seed=7), str(wd))


# 3. One `error:` line for every mistake, as the last line, exit non-zero.

def _cli(args, **env):
  return subprocess.run([sys.executable, "-m", "afd_jax.main", *args], cwd=ROOT,
                        capture_output=True, text=True, env={**os.environ, **env},
                        timeout=300)


def _last_line(err):
  return err.strip().splitlines()[-1]


@pytest.mark.parametrize("args,message", [
    (["--config=configs/cifar100/teacher.py:model=resnet8,runlocal",
      "--config.optim.lrr=0.1"],
     "error: unknown field optim.lrr; did you mean lr"),
    (["--config=configs/cifar100/teacher.py:model=resnet8,runlocal",
      "--config.optimm.lr=0.1"],
     "error: unknown field optimm; did you mean optim"),
    (["--config=configs/no_such_file.py"],
     "error: config file 'configs/no_such_file.py' does not exist"),
    (["--config=configs/cifar100/teacher.py:model=resnet8,runlocal",
      "--config.optim.lr=fast"],
     "error: flag --config.optim.lr=fast: could not convert string to float"),
    (["--config=configs/cifar100/afd.py:runlocal", "--config.sweep.method.bta=1,2",
      "--config.seeds=0,1"],
     "error: method 'afd' has no field(s) ['bta']"),
])
def test_flag_mistakes_are_one_error_line(args, message, tmp_path):
  out = _cli([*args, f"--workdir={tmp_path / 'run'}"])
  assert out.returncode == 1
  assert _last_line(out.stderr).startswith(message), out.stderr[-2000:]
  assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) < 5
  assert not (tmp_path / "run").exists()


def test_an_unwritable_workdir_is_one_error_line(digits_data_dir, tmp_path, capfd):
  (tmp_path / "file").write_text("")
  code, err = run_main(tiny_config(digits_data_dir), tmp_path / "file" / "run", capfd)
  assert code == 1
  assert _last_line(err).startswith(f"error: cannot create workdir {tmp_path}/file/run: ")
  assert "Traceback" not in err


def test_sigint_at_startup_is_one_error_line(digits_data_dir, tmp_path, capfd,
                                              monkeypatch):
  monkeypatch.setenv("AFD_JAX_INJECT", "startup@0:SIGINT")
  monkeypatch.setattr(signal, "SIGINT", signal.SIGINT)
  code, err = run_main(tiny_config(digits_data_dir), tmp_path / "run", capfd)
  assert code == 128 + signal.SIGINT
  assert _last_line(err).startswith("error: interrupted (SIGINT)")
  assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_a_full_disk_is_one_error_line_cleans_up_and_resumes(finished, digits_data_dir,
                                                             tmp_path, capfd, monkeypatch):
  """As on a full disk: orbax's write of checkpoint 8 fails half-way, its temporary
  directory left behind, the OSError wrapped by orbax's own exception."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  save = ocp.CheckpointManager.save

  def full_disk(self, step, *args, **kwargs):
    if step == 8 and str(self.directory).endswith("checkpoints"):
      tmp = os.path.join(str(self.directory), "8.orbax-checkpoint-tmp-1234", "state")
      os.makedirs(tmp)
      with open(os.path.join(tmp, "partial"), "wb") as f:
        f.write(b"x" * 100)
      raise ValueError("Saving failed") from OSError(errno.ENOSPC,
                                                     "No space left on device")
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
  wd = tmp_path / "run"
  code, err = run_main(tiny_config(digits_data_dir), wd, capfd)
  assert code == 1
  assert _last_line(err).startswith(
      f"error: no space left on device while saving checkpoint {wd}/checkpoints/8")
  assert "rerun the same command to resume" in _last_line(err)
  assert "Traceback" not in err
  assert not glob.glob(str(wd / "**" / "*orbax-checkpoint-tmp*"), recursive=True)
  assert checkpointing.latest_step(str(wd)) == 4  # kept
  monkeypatch.setattr(ocp.CheckpointManager, "save", save)  # space freed
  code, err = run_main(tiny_config(digits_data_dir), wd, capfd)
  assert code == 0, err[-2000:]
  chex.assert_trees_all_close(_latest_state(str(wd))[1], _latest_state(finished)[1],
                              rtol=1e-6, atol=1e-6)


def test_writes_still_running_when_a_save_fails_end_before_it_returns(tmp_path, monkeypatch,
                                                                      capfd):
  """As orbax on a full disk, deterministically: a save's writes run as tasks of a fresh
  event loop, closed when the first fails, while another still writes into the temporary
  directory from a thread (tensorstore's). The save returns after that write ended, and
  then removes what it wrote."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  late = threading.Event()  # set when the first write failed

  def save(self, step, *args, **kwargs):
    tmp = os.path.join(str(self.directory), f"{step}.orbax-checkpoint-tmp")

    def slow_write():
      late.wait(5)
      time.sleep(0.2)  # still writing when the failure reaches the caller
      os.makedirs(tmp, exist_ok=True)
      with open(os.path.join(tmp, "late"), "wb") as f:
        f.write(b"x")

    async def full():
      late.set()
      raise OSError(errno.ENOSPC, "No space left on device")

    async def slow():
      await asyncio.get_running_loop().run_in_executor(None, slow_write)

    async def writes():
      await asyncio.gather(full(), slow())

    loop = asyncio.new_event_loop()  # orbax's synchronous save, as in its asyncio_utils
    try:
      loop.run_until_complete(writes())
    finally:
      loop.close()

  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  ckpts = checkpointing.RunCheckpoints(str(tmp_path))
  with pytest.raises(OSError, match="no space left on device while saving checkpoint"):
    ckpts.save(1, {"w": np.zeros(3)}, {})
  ckpts.close()
  time.sleep(0.4)  # a write the save did not wait for lands now
  assert os.listdir(tmp_path / "checkpoints") == []
  assert "Event loop is closed" not in capfd.readouterr().err


def _disk_usage(path):
  """Bytes `path` takes on a tmpfs: every file and directory rounded up to 4 KiB pages."""
  pages = lambda n: -(-n // 4096) * 4096  # noqa: E731
  total = 0
  for root, dirs, files in os.walk(path):
    total += 4096 * len(dirs) + sum(pages(os.path.getsize(os.path.join(root, f)))
                                    for f in files)
  return total


@pytest.fixture
def small_disk(tmp_path):
  """``small_disk(bytes) -> path`` of an empty tmpfs of that size (skips where mounting
  is not permitted: it needs root)."""
  mounted = []

  def mount(size):
    path = tmp_path / f"disk{len(mounted)}"
    path.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                          str(path)], capture_output=True, text=True, check=False)
    if out.returncode:
      pytest.skip(f"cannot mount a tmpfs here ({out.stderr.strip()}): a real full disk "
                  "needs root")
    mounted.append(path)
    return path

  yield mount
  for path in mounted:
    subprocess.run(["umount", str(path)], check=False)


@pytest.mark.parametrize("saves_that_fit", [0.5, 1.5])
def test_a_full_disk_on_a_real_filesystem_ends_with_one_error_line(
    saves_that_fit, finished, digits_data_dir, small_disk, capfd):
  """A tmpfs with room for half a checkpoint (the first save fails) or one and a half (the
  second, best/2, fails half-way): orbax's writes that were still running when one failed
  end inside the save, so nothing is printed after the error line and no temporary
  directory is left."""
  size = int(saves_that_fit * _disk_usage(os.path.join(finished, "checkpoints", "8")))
  wd = small_disk(size) / "run"
  config = tiny_config(digits_data_dir, max_steps=2)
  config.logging.checkpoint_every_steps = 1
  code, err = run_main(config, wd, capfd)
  gc.collect()  # asyncio reports a write's unretrieved error when its task is collected
  err += capfd.readouterr().err
  assert code == 1
  failed = wd / ("checkpoints/1" if saves_that_fit < 1 else "best/2")
  assert _last_line(err).startswith(
      f"error: no space left on device while saving checkpoint {failed} "), err[-3000:]
  assert "Traceback" not in err and "Event loop is closed" not in err, err[-3000:]
  kept = {"checkpoints": ["1"] if saves_that_fit > 1 else [], "best": []}
  assert {d: sorted(os.listdir(wd / d)) for d in kept} == kept
  assert not glob.glob(str(wd / "**" / "*orbax-checkpoint-tmp*"), recursive=True)

# 4. Values validated against what they mean.

@pytest.mark.parametrize("model,stride", [("resnet8", 4), ("vgg8", 8),
                                          ("resnet18_imagenet", 32)])
def test_the_stride_table_matches_the_models(model, stride):
  """At the smallest size the deepest map is 1x1; at twice it, 2x2."""
  net = models.get_model(model, 10)
  for size, side in ((stride, 1), (2 * stride, 2)):
    shapes = train_state.feature_shapes(net, size)
    assert min(s[1] for s in shapes.values() if len(s) == 4) == side
  assert validation.smallest_image_size(model) == stride


@pytest.mark.parametrize("model,stride", [
    ("resnet20", 4),  # 3x3/1 stem, stages /1 /2 /2
    ("vgg8", 8),  # 2x2 max-pools before conv groups 2, 3, 4 (group 5's from 64 pixels)
    ("MobileNetV2", 16),  # 3x3/2 stem, stages /1 /2 /2 /2
    ("resnet18_imagenet", 32),  # 7x7/2 stem, 3x3/2 max-pool, stages /1 /2 /2 /2
    ("deeplabv3p_tiny_resnet10", 8),  # the CPU-sized backbone at output stride 8
])
def test_the_measured_stride_is_the_architectures(model, stride):
  assert validation.total_stride(model)[0] == stride
  assert validation.smallest_image_size(model) == stride


def test_the_stride_of_an_unknown_model_names_the_accepted_ones():
  with pytest.raises(ValueError, match=r"^unknown model 'resnet7'; accepted: resnet8, "):
    validation.total_stride("resnet7")


def test_an_image_too_small_for_the_strides_is_refused(digits_data_dir, tmp_path):
  config = tiny_config(digits_data_dir)
  config.data.image_size = 1
  with pytest.raises(ValueError, match=r"image_size=1 is too small for model 'resnet8' "
                     r"\(config.model.name\): its feature maps shrink by 4 .* accepted: >= 4"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("method,field,value,accepted", [
    ("kd", "temperature", 0.0, "> 0"),
    ("kd", "kd_weight", -0.5, ">= 0"),
    ("crd", "nce_m", 1.0, r"in \[0, 1\)"),
    ("afd", "qk_dim", 0, "an integer >= 1"),
    ("aft_kd", "afb_weight", (1.0, -1.0), ">= 0"),
    ("tat", "temperature", 0.0, "> 0, or None"),
])
def test_method_fields_are_checked_against_their_ranges(method, field, value, accepted,
                                                        digits_data_dir, tmp_path):
  config = distill(tiny_config(digits_data_dir), str(tmp_path / "teacher"), method=method,
                   **{field: value})
  with pytest.raises(ValueError, match=re.escape(f"config.method.{field}={value!r} is out "
                     f"of range for method '{method}'; accepted: ") + accepted):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_every_method_field_has_a_range_its_default_satisfies():
  for name in methods.method_names():
    cls = methods.hparams_class(name)
    for field, value in methods.resolved_fields({"name": name}).items():
      if field != "name":
        assert ranges.field_range(cls, field).ok(value), (name, field, value)


def test_a_new_method_brings_its_ranges_and_a_field_without_one_is_refused(monkeypatch):
  """The range written beside a default is what `check_method` enforces; a field with a
  plain default, new or redeclaring an inherited one, stops the method's registration."""
  monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))

  @dataclasses.dataclass(frozen=True)
  class Config:
    width: int = ranges.ranged(8, ranges.POS_INT)
    scale: float = ranges.ranged(0.5, ranges.Range(lambda v: 0 < v < 1, "in (0, 1)"))

  base.register("throwaway", Config, needs_teacher=False)(lambda hp, **_: None)
  validation.check_method({"name": "throwaway", "width": 3, "scale": 0.25})
  for field, value, accepted in (("width", 0, "an integer >= 1"),
                                 ("scale", 1.5, "in (0, 1)")):
    with pytest.raises(ValueError) as e:
      validation.check_method({"name": "throwaway", field: value})
    assert str(e.value) == (f"config.method.{field}={value!r} is out of range for method "
                            f"'throwaway'; accepted: {accepted}")

  @dataclasses.dataclass(frozen=True)
  class Unranged:
    width: int = ranges.ranged(8, ranges.POS_INT)
    depth: int = 2

  @dataclasses.dataclass(frozen=True)
  class Redeclared(base.LogitTerms):
    kd_weight: float = 0.5

  for name, cls, field in (("unranged", Unranged, "depth"),
                           ("redeclared", Redeclared, "kd_weight")):
    with pytest.raises(ValueError) as e:
      base.register(name, cls)(lambda hp, **_: None)
    assert str(e.value).startswith(f"method {name!r}: field(s) {field} of "), e.value
    assert "\n" not in str(e.value) and name not in methods.method_names()


def _diverged(step, bad, **values):
  return faults.Diverged(step, bad, {"lr": 0.05, "ce": 1.0, **values})


def test_the_divergence_message_names_the_likely_cause(digits_data_dir):
  config = tiny_config(digits_data_dir)
  config.optim.lr = 1e8
  assert "optim.lr=1e+08 is far above" in validation.divergence_advice(
      config, _diverged(5, ["loss"]))
  config = distill(tiny_config(digits_data_dir), "t", method="kd", temperature=1e-3)
  advice = validation.divergence_advice(config, _diverged(3, ["kd", "loss"], kd=math.inf))
  assert "'kd' loss term(s) kd went non-finite while the cross-entropy stayed finite" in advice
  assert "temperature=0.001" in advice and "Lower --config.optim.lr" not in advice
  first = validation.divergence_advice(tiny_config(digits_data_dir),
                                       _diverged(1, ["ce", "loss"]))
  assert "the very first step diverged" in first
  later = validation.divergence_advice(tiny_config(digits_data_dir),
                                       _diverged(40, ["ce", "loss"]))
  assert later.startswith("Lower --config.optim.lr (now 0.05)")
