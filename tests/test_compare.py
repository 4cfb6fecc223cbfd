"""Method comparison: the table and chart on hand-made results (numbers recomputed here
with NumPy, paper numbers from configs/pairs.py), and configs/compare.py's plan end to end
on digits at smoke scale, rerun without retraining."""
import json
import os

from matplotlib.container import ErrorbarContainer
import ml_collections
import numpy as np
import pytest
from scipy import stats

from afd_jax import plan
from afd_jax.analysis import comparison
from config_loading import load
from configs import compare
from configs import pairs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PAIRING_ERROR = ("PairingError: method 'fsp': student and teacher stage channels differ "
                 "(32 | 64 vs 16 | 32)\nset student_stages")


def _run(model, top1, best=None):
  return {"model": model, "seeds": list(range(len(top1))), "top1": list(top1),
          "best_top1": list(best if best is not None else top1),
          "train_seconds": [1.0] * len(top1)}


def _results(dataset="cifar100"):
  """wrn_40_2→wrn_16_2: teacher (1 seed), the student alone and KD (3 seeds), AT (1),
  FSP that could not pair the networks."""
  return {"dataset": dataset, "pairs": [{
      "teacher": "wrn_40_2", "student": "wrn_16_2", "runs": {
          "teacher": _run("wrn_40_2", [75.1], [75.4]),
          "none": _run("wrn_16_2", [73.0, 73.4, 72.9], [73.2, 73.5, 73.1]),
          "kd": _run("wrn_16_2", [74.8, 75.2, 74.5], [75.0, 75.3, 74.9]),
          "at": _run("wrn_16_2", [74.1]),
          "fsp": {"model": "wrn_16_2", "error": PAIRING_ERROR}}}]}


def _cells(table: str) -> dict[str, list[str]]:
  """{first cell: the row's cells} of a Markdown table."""
  rows = [[c.strip() for c in line.strip("|").split(" | ")]
          for line in table.splitlines() if line.startswith("| ") and "---" not in line]
  return {r[0]: r for r in rows[1:]}


def _pm(values) -> str:
  return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def test_table_mean_std_paper_numbers_and_na_rows():
  r = _results()
  rows = _cells(comparison.pair_table("cifar100", r["pairs"][0], pairs.expected_top1))
  assert list(rows) == ["teacher", "none (student alone)", "kd", "at", "fsp"]
  kd, none = r["pairs"][0]["runs"]["kd"], r["pairs"][0]["runs"]["none"]
  # | method | model | top-1 | best | Δ vs none | seeds | paper |
  se = np.sqrt(np.var(kd["top1"], ddof=1) / 3 + np.var(none["top1"], ddof=1) / 3)
  assert rows["kd"][1:6] == ["wrn_16_2", _pm(kd["top1"]), _pm(kd["best_top1"]),
                             f"{np.mean(kd['top1']) - np.mean(none['top1']):+.2f} ± "
                             f"{se:.2f} *", "3"]
  assert rows["at"][4] == f"{74.1 - np.mean(none['top1']):+.2f}"  # one seed: not tested
  assert rows["none (student alone)"][2] == _pm(none["top1"])
  assert rows["teacher"][2:4] == ["75.10", "75.40"] and rows["teacher"][5] == "1"
  assert rows["at"][2] == "74.10" and rows["at"][5] == "1"  # one seed: no ± 0.00
  # Published numbers: the pair's methods, the models trained alone.
  published = pairs.find("cifar100", "wrn_40_2", "wrn_16_2").published
  assert rows["kd"][6] == f"{published['kd'][0]:.2f} (CRD)" == "74.92 (CRD)"
  assert rows["at"][6] == f"{published['at'][0]:.2f} (CRD)"
  assert rows["teacher"][6] == f"{pairs.TOP1['cifar100']['wrn_40_2']:.2f} (CRD)"
  assert rows["none (student alone)"][6] == f"{pairs.TOP1['cifar100']['wrn_16_2']:.2f} (CRD)"
  # A method that cannot pair the networks: its reason (first line), no numbers.
  reason = PAIRING_ERROR.splitlines()[0].replace("|", "\\|")  # escaped in a table cell
  assert rows["fsp"][2] == f"n/a ({reason})"
  assert rows["fsp"][3:6] == ["–", "–", "0"]


@pytest.mark.parametrize("a,b", [
    ([74.8, 75.2, 74.5], [73.0, 73.4, 72.9]),        # clearly apart
    ([93.1, 95.0, 91.2, 94.4], [92.0, 96.5, 90.1]),  # inside the spread, unequal n
    ([80.0, 80.0, 80.0], [79.0, 81.0, 80.5])])       # one side without variance
def test_welch_matches_scipy(a, b):
  diff, se, p = comparison.welch(a, b)
  expected = stats.ttest_ind(a, b, equal_var=False)
  np.testing.assert_allclose(p, expected.pvalue, rtol=1e-10)
  np.testing.assert_allclose(diff / se, expected.statistic, rtol=1e-10)
  np.testing.assert_allclose(diff, np.mean(a) - np.mean(b))


def test_delta_marks_only_differences_beyond_the_seed_spread():
  r = _results()
  runs = r["pairs"][0]["runs"]
  runs["kd"] = _run("wrn_16_2", [74.1, 72.0, 73.9])  # +0.23 inside a spread of ~1
  rows = {row.method: row for row in comparison.summarize("cifar100", r["pairs"][0])}
  assert not rows["kd"].significant and rows["kd"].p_value > 0.5
  cells = _cells(comparison.pair_table("cifar100", r["pairs"][0]))
  assert cells["kd"][4].endswith(f"± {rows['kd'].delta_se:.2f}")  # no mark
  assert rows["teacher"].p_value is None and cells["teacher"][4] == f"{75.1 - 73.1:+.2f}"
  assert "Welch" in comparison.markdown(r)  # the rule is stated in the caption
  with pytest.raises(ValueError, match="two or more values per side; got 1 and 3"):
    comparison.welch([1.0], [1.0, 2.0, 3.0])


def test_markdown_and_json_without_published_numbers():
  r = _results("digits")
  text = comparison.markdown(r, pairs.expected_top1)
  assert "### wrn_40_2 → wrn_16_2" in text
  assert {row[6] for row in _cells(text).values()} == {"–"}  # digits: nothing published
  summary = comparison.summary_json(r, pairs.expected_top1)
  kd = next(s for s in summary["pairs"][0]["summary"] if s["method"] == "kd")
  np.testing.assert_allclose([kd["top1"], kd["top1_std"]],
                             [np.mean([74.8, 75.2, 74.5]), np.std([74.8, 75.2, 74.5],
                                                                  ddof=1)])
  assert summary["pairs"][0]["runs"]["kd"]["top1"] == [74.8, 75.2, 74.5]  # raw numbers
  json.dumps(summary)


def test_figure_bars_error_bars_paper_markers_and_png(tmp_path):
  r = _results()
  fig = comparison.comparison_figure(r, pairs.expected_top1)
  (ax,) = fig.axes
  runs = r["pairs"][0]["runs"]
  done = [m for m, run in runs.items() if "error" not in run]
  np.testing.assert_allclose([p.get_height() for p in ax.patches],
                             [np.mean(runs[m]["top1"]) for m in done])
  (errorbar,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
  caps = errorbar.lines[2][0].get_segments()  # the vertical ±std lines
  np.testing.assert_allclose([seg[1, 1] - seg[0, 1] for seg in caps],
                             [2 * np.std(runs[m]["top1"], ddof=1) if len(runs[m]["top1"]) > 1
                              else 0.0 for m in done])
  (paper,) = [line for line in ax.lines if line.get_label() == "paper"]
  published = dict(pairs.find("cifar100", "wrn_40_2", "wrn_16_2").published,
                   teacher=(pairs.TOP1["cifar100"]["wrn_40_2"], "CRD"),
                   none=(pairs.TOP1["cifar100"]["wrn_16_2"], "CRD"))
  marked = [(i, published[m][0]) for i, m in enumerate(runs) if m in published]
  assert len(marked) >= 4  # teacher, none, kd, at (fsp's too where the table has it)
  np.testing.assert_allclose(np.stack([paper.get_xdata(), paper.get_ydata()], 1), marked)
  assert [t.get_text() for t in ax.texts if t.get_text() == "n/a"] == ["n/a"]
  assert [t.get_text() for t in ax.get_xticklabels()] == list(runs)
  path = comparison.save_png(r, str(tmp_path / "out" / "comparison.png"),
                             pairs.expected_top1)
  with open(path, "rb") as f:
    assert f.read(8) == PNG_MAGIC and os.path.getsize(path) > 5_000


def _snapshot(workdir):
  """{path: (mtime, bytes)} of every run's result.json and metrics.jsonl."""
  out = {}
  for d, _, files in os.walk(workdir):
    for name in set(files) & {"result.json", "metrics.jsonl"}:
      path = os.path.join(d, name)
      with open(path, "rb") as f:
        out[path] = (os.stat(path).st_mtime_ns, f.read())
  return out


def test_compare_end_to_end_and_rerun_skips(digits_data_dir, tmp_path, capsys):
  """configs/compare.py: a plan of the teacher, the student alone, KD and ICKD (a
  segmentation method, which cannot pair classifiers: an n/a row, found before anything
  trained), as ``python -m afd_jax.main --config=configs/compare.py:...`` runs it."""
  workdir = tmp_path / "cmp"
  arg = (f"dataset=digits,methods=kd+ickd,pairs=resnet20:resnet8,seeds=0+1,runlocal,"
         f"data_dir={digits_data_dir}")
  plan.run_config(load("compare.py", arg), str(workdir))
  runs = {"resnet20", *(f"resnet20-resnet8/{m}/seed_{s}" for m in ("none", "kd")
                        for s in (0, 1))}
  for run in runs:
    with open(workdir / run / "result.json", encoding="utf-8") as f:
      assert json.load(f)["step"] == 2
  assert not (workdir / "resnet20-resnet8" / "ickd").exists()
  rows = _cells((workdir / "results.md").read_text(encoding="utf-8"))
  assert list(rows) == ["teacher", "none (student alone)", "kd", "ickd"]
  assert [r[5] for r in rows.values()] == ["1", "2", "2", "0"]
  assert rows["ickd"][2].startswith("n/a (PairingError")
  with open(workdir / "results.json", encoding="utf-8") as f:
    kd = json.load(f)["pairs"][0]["runs"]["kd"]
  for s in (0, 1):
    with open(workdir / f"resnet20-resnet8/kd/seed_{s}/result.json", encoding="utf-8") as f:
      assert kd["top1"][s] == json.load(f)["top1"]
  assert (workdir / "results.png").stat().st_size > 0

  before = _snapshot(workdir)
  assert len(before) == 2 * len(runs)
  capsys.readouterr()
  plan.run_config(load("compare.py", arg), str(workdir))
  assert _snapshot(workdir) == before  # nothing retrained, no result rewritten
  assert capsys.readouterr().out.count("finished earlier") == len(runs)
  assert (workdir / "results.md").read_text(encoding="utf-8").count("| kd |") == 1


def test_cifar100_plan_pairs_rows_teachers_and_published_numbers():
  """Two pairs sharing a student and an imported teacher pattern: one student-alone run
  shown in both pairs, each method's teacher filled in, the papers' numbers beside the
  rows (configs/pairs.py's), shortened epochs."""
  p = plan.from_config(load("compare.py", (
      "dataset=cifar100,methods=kd+fsp,seeds=0+1,epochs=2,"
      "pairs=resnet56:resnet20+resnet110:resnet20,"
      "teacher_checkpoint=runs/cifar100/{teacher}")))
  a, b = ("resnet56", "resnet20"), ("resnet110", "resnet20")
  assert [(r.name, r.row, r.pairs) for r in p.runs] == [
      (f"resnet56-resnet20/{m}/seed_{s}", m, pp) for m, pp in
      (("none", (a, b)), ("kd", (a,)), ("fsp", (a,))) for s in (0, 1)] + [
      (f"resnet110-resnet20/{m}/seed_{s}", m, (b,)) for m in ("kd", "fsp") for s in (0, 1)]
  run = next(r for r in p.runs if r.name == "resnet110-resnet20/kd/seed_1")
  assert (run.config.teacher.name, run.config.seed) == ("resnet110", 1)
  assert run.config.teacher.checkpoint == os.path.abspath("runs/cifar100/resnet110")
  assert run.config.schedule.decay_epochs == (150 / 120, 180 / 120, 210 / 120)
  assert p.dataset == "cifar100" and not p.vmap
  for method, model, teacher in (("kd", "resnet20", "resnet56"),
                                 ("fsp", "resnet20", "resnet110"),
                                 ("none", "resnet20", None)):
    found = pairs.expected_top1("cifar100", method, model, teacher)
    assert found is not None
    assert p.paper("cifar100", method, model, teacher) == found


def test_digits_plan_trains_the_teacher_once_with_the_first_seed():
  c = load("compare.py", "methods=kd,seeds=3+4,vmap")  # the quickstart's pair by default
  p = plan.from_config(c)
  assert [(r.name, r.config.seed, r.needs) for r in p.runs] == [
      ("resnet14", 3, ()), ("resnet14-resnet8/none/seed_3", 3, ()),
      ("resnet14-resnet8/none/seed_4", 4, ()),
      ("resnet14-resnet8/kd/seed_3", 3, ("resnet14",)),
      ("resnet14-resnet8/kd/seed_4", 4, ("resnet14",))]
  assert p.runs[0].pairs == (("resnet14", "resnet8"),) and p.vmap
  assert p.runs[-1].config.teacher.checkpoint == "{workdir}/resnet14"
  assert p.paper is None  # digits: nothing published


@pytest.mark.parametrize("arg,match", [
    ("dataset=imagenet2012", "dataset='imagenet2012'; accepted: digits, cifar100"),
    ("pairs=resnet20", "item 'resnet20' is not <teacher>:<student>"),
    ("methods=kd+nope", r"unknown \['nope'\]; registered: .*, or 'all'"),
    ("seeds=0+0", "seeds='0\\+0'; accepted: distinct integers"),
    ("epochs=two", "epochs='two'; accepted: an integer"),
    ("vmaps", "config argument 'vmaps' unknown; accepted: .*dataset")])
def test_bad_arguments_are_clear_errors(arg, match):
  with pytest.raises(ValueError, match=match):
    load("compare.py", arg)


def test_methods_all_is_every_distilling_method():
  from afd_jax import methods  # pylint: disable=g-import-not-at-top
  c = load("compare.py", "methods=all,runlocal")
  expected = [m for m in methods.method_names() if methods.needs_teacher(m)]
  assert [n.split("/")[1] for n in c.run_order[1:]] == ["none", *expected]


def test_short_runs_keep_every_step_decay():
  """epochs=2 of CIFAR's 150/180/210-of-240 schedule: three decays (not two, as when
  the scaled epochs were rounded and de-duplicated), at their relative place."""
  c = ml_collections.ConfigDict(dict(schedule=dict(num_epochs=240,
                                                   decay_epochs=(150, 180, 210))))
  compare.scale_epochs(c, 2)
  assert c.schedule.decay_epochs == (150 / 120, 180 / 120, 210 / 120)
