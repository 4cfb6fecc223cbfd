"""Experiment plans (`afd_jax.plan`, `afd_jax.group`): axes expanded into runs, the whole
plan validated before anything trains, a vmapped β × seed group equal to its members' own
runs (through a preemption and resume), one table, and no import circle in the package."""
import ast
import json
import os

import chex
import jax
import numpy as np
import pytest

from afd_jax import checkpointing, faults, metric_writer, plan
from config_loading import load, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BETAS, SEEDS = (20.0, 80.0), (0, 1)


def _afd_config(data_dir, **overrides):
  """AFD on digits, device path, a random-init resnet8 teacher: one epoch of 4 steps (the
  last a partial batch), one per dispatch, 16 eval images. lr 0.002 keeps the vmapped programs' float rounding
  (1e-8) from growing past the 1e-5 compared here."""
  c = tiny_config(data_dir, **overrides)
  c.optim.lr = 0.002
  # 56 images at batch 16: each epoch ends with a partial batch of 8, trained.
  c.data.update(dict(pipeline="device", num_eval_examples=16, num_train_examples=56,
                     last_batch="train"))
  c.eval_batch_size = 16
  c.schedule.num_epochs = 1
  c.steps_per_dispatch = 1  # (k > 1 unrolls k copies of 4 members' steps on CPU)
  c.teacher.update(dict(name="resnet8", random_init=True))
  c.method = dict(name="afd")
  return c


def _state(workdir):
  step = checkpointing.latest_step(workdir)
  return step, checkpointing.read_numpy(os.path.join(workdir, "checkpoints", str(step),
                                                     "state"))


def _sweep_plan(data_dir, **overrides):
  c = _afd_config(data_dir, seeds=SEEDS, vmap_seeds=True, **overrides)
  return plan.from_config(c, {"method.beta": ",".join(map(str, BETAS))})


@pytest.fixture(scope="module")
def sweep(digits_data_dir, tmp_path_factory):
  """β ∈ BETAS × SEEDS as one vmapped group (stopped at step 2, then resumed to 4), and
  its last member (β and seed both not the config's) as an ordinary run of its own."""
  root = tmp_path_factory.mktemp("plan")
  out = {"root": str(root / "sweep")}
  # Stopped as a preemption does (the same programs as the resumed run's: a stop through
  # max_steps=2 would change the config and recompile the group's 4-member step).
  with pytest.MonkeyPatch.context() as m:
    m.setenv("AFD_JAX_INJECT", "step@2")
    with pytest.raises(faults.Preempted) as stopped:
      plan.run_plan(_sweep_plan(digits_data_dir), out["root"])
  assert stopped.value.step == 2
  out["second"] = plan.run_plan(_sweep_plan(digits_data_dir), out["root"])
  for beta, seed in ((BETAS[1], SEEDS[1]),):
    c = _afd_config(digits_data_dir, seed=seed)
    c.method.beta = beta
    path = str(root / f"alone_{beta:g}_{seed}")
    out[(beta, seed)] = (path, plan.train_run(c, path))
  return out


def test_axes_expand_to_named_runs_in_one_layout(digits_data_dir):
  p = _sweep_plan(digits_data_dir)
  assert [r.name for r in p.runs] == [f"beta={b:g}/seed_{s}" for b in BETAS for s in SEEDS]
  assert [r.row for r in p.runs] == [f"afd beta={b:g}" for b in BETAS for s in SEEDS]
  for r in p.runs:
    assert r.config.method.beta == r.hparams["method.beta"]
    assert r.config.seeds is None and not r.config.vmap_seeds
  single = plan.from_config(_afd_config(digits_data_dir))
  assert single.single and single.runs[0].name == ""
  c = _afd_config(digits_data_dir)
  two = plan.from_config(c, {"optim.lr": "0.1,0.2", "method.temperature": "4"})
  assert [r.name for r in two.runs] == ["optim.lr=0.1,temperature=4", "optim.lr=0.2,temperature=4"]
  assert two.runs[1].config.optim.lr == 0.2
  assert two.runs[1].config.method.temperature == 4.0


@pytest.mark.parametrize("sweep_, match", [
    ({"optim.lrr": "0.1"}, r"config has no field 'optim.lrr'"),
    ({"method.bta": "1"}, r"method 'afd' has no field\(s\) \['bta'\]"),
    ({"optim": "1"}, r"'optim' is not a scalar field"),
    ({"optim.lr": "x"}, r"optim.lr='x' does not parse"),
])
def test_bad_sweeps_are_clear_errors(sweep_, match, digits_data_dir):
  with pytest.raises(ValueError, match=match):
    plan.from_config(_afd_config(digits_data_dir), sweep_)


def test_a_typo_in_the_last_run_fails_before_anything_trains(digits_data_dir, tmp_path):
  """The quickstart suite with a run whose method field is wrong: the plan names the run
  and the field (in about a second: validation builds nothing but shapes), and no run
  has a workdir."""
  suite = load("quickstart.py", "runlocal,methods=kd+afd")
  for run in suite.runs.values():
    run.data.data_dir = digits_data_dir
  suite.runs.student_afd.method.betta = 5.0
  with pytest.raises(plan.PlanError, match=r"run 'student_afd'.*no field\(s\) \['betta'\]"):
    plan.run_plan(plan.from_config(suite), str(tmp_path / "quick"))
  assert not os.path.exists(tmp_path / "quick" / "teacher")
  suite.runs.student_afd.method = dict(name="kdd")
  with pytest.raises(ValueError, match=r"Unknown method 'kdd'"):
    plan.run_plan(plan.from_config(suite), str(tmp_path / "quick"))
  assert not os.path.exists(tmp_path / "quick" / "teacher")


def test_a_missing_teacher_checkpoint_names_the_run(digits_data_dir, tmp_path):
  c = _afd_config(digits_data_dir, seeds=SEEDS)
  c.teacher.update(dict(random_init=False, checkpoint=str(tmp_path / "nowhere")))
  with pytest.raises(plan.PlanError, match=r"run 'seed_0'.*nowhere' does not exist"):
    plan.run_plan(plan.from_config(c), str(tmp_path / "p"))
  assert not os.path.exists(tmp_path / "p")


def test_vmapped_members_equal_their_own_runs(sweep):
  """Member (β, seed) of the stacked checkpoint == the run of that β and seed, through an
  epoch's partial last batch, though the group stopped at step 2 and resumed: params and
  BN statistics to 1e-5, the momentum traces (unscaled gradient sums, 1/lr = 500 times as
  sensitive to float rounding) as the updates they make, lr · trace, to 1e-5."""
  groups = [d for d in os.listdir(sweep["root"]) if d.startswith("vmapped_")]
  assert len(groups) == 1
  step, stacked = _state(os.path.join(sweep["root"], groups[0]))
  assert step == 4 and np.asarray(stacked["step"]).tolist() == [4] * 4
  names = [f"beta={b:g}/seed_{s}" for b in BETAS for s in SEEDS]
  for (beta, seed), k in (((BETAS[1], SEEDS[1]), 3),):
    path, alone_result = sweep[(beta, seed)]
    _, alone = _state(path)
    mine = jax.tree.map(lambda x, k=k: x[k], stacked)
    for part in ("params", "batch_stats"):
      chex.assert_trees_all_close(mine[part], alone[part], rtol=1e-5, atol=1e-5)
    lr = 0.002  # the momentum traces as the updates they make: lr · trace, to 1e-5
    chex.assert_trees_all_close(jax.tree.map(lambda t: lr * t, mine["opt_state"]),
                                jax.tree.map(lambda t: lr * t, alone["opt_state"]),
                                rtol=1e-5, atol=1e-5)
    member = sweep["second"]["runs"][names[k]]
    assert member["top1"] == pytest.approx(alone_result["top1"], abs=1e-3)
  # β and the seed both matter: members 0 (β 20, seed 0) and 2 (β 80, seed 0) share
  # their init and batches, so only β separates them.
  m0, m2 = (jax.tree.map(lambda x, k=k: x[k], stacked["params"]["method"]) for k in (0, 2))
  assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(m0), jax.tree.leaves(m2)))


def test_members_are_finished_runs_and_a_rerun_skips_them(sweep, digits_data_dir, capsys):
  for r in _sweep_plan(digits_data_dir).runs:
    path = os.path.join(sweep["root"], r.name)
    assert plan.finished_result(r.config, path) == sweep["second"]["runs"][r.name]
  again = plan.run_plan(_sweep_plan(digits_data_dir), sweep["root"])
  assert again["runs"] == sweep["second"]["runs"]
  assert capsys.readouterr().out.count("finished earlier") == 4


def test_table_rows_mean_std_over_seeds(sweep):
  runs = sweep["second"]["runs"]
  table = (open(os.path.join(sweep["root"], "results.md"), encoding="utf-8").read())
  for beta in BETAS:
    top1 = [runs[f"beta={beta:g}/seed_{s}"]["top1"] for s in SEEDS]
    expected = f"{np.mean(top1):.2f} ± {np.std(top1, ddof=1):.2f}"
    row = next(line for line in table.splitlines() if line.startswith(f"| afd beta={beta:g} "))
    assert row.split(" | ")[2] == expected and row.split(" | ")[5] == "2"
  summary = json.load(open(os.path.join(sweep["root"], "results.json"), encoding="utf-8"))
  assert summary["runs"] == json.loads(json.dumps(runs))
  assert open(os.path.join(sweep["root"], "results.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_group_metrics_per_member(sweep):
  groups = [d for d in os.listdir(sweep["root"]) if d.startswith("vmapped_")]
  rows = metric_writer.read_metrics(os.path.join(sweep["root"], groups[0]))
  evals = [r for r in rows if "eval/top1" in r]
  assert [r["step"] for r in evals] == [4]  # the epoch's end (the stop at 2 was a preemption)
  names = [f"beta={b:g}/seed_{s}" for b in BETAS for s in SEEDS]
  per = [evals[0][f"{n}/eval/top1"] for n in names]
  assert evals[0]["eval/top1"] == pytest.approx(np.mean(per), abs=1e-4)
  assert evals[0]["eval/top1_std"] == pytest.approx(np.std(per, ddof=1), abs=1e-4)
  for n in names:
    assert sweep["second"]["runs"][n]["best_top1"] == max(r[f"{n}/eval/top1"] for r in evals)
  train_rows = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train_rows] == [2, 4]
  for r in train_rows:
    assert r["train/loss"] == pytest.approx(np.mean([r[f"{n}/train/loss"] for n in names]))
  # AFD's link heatmap, drawn for each member into its own workdir as its own run draws it.
  for n in names:
    with open(os.path.join(sweep["root"], n, "links.png"), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_untraceable_fields_split_the_group(digits_data_dir):
  """A field that sets a shape (AFD's qk_dim) cannot be traced: the group splits."""
  from afd_jax import group  # pylint: disable=g-import-not-at-top
  c = _afd_config(digits_data_dir, seeds=(0,), vmap_seeds=True)
  members = tuple(group.Member(f"q{q}", "", r.config, {"method.qk_dim": q})
                  for q, r in zip((8, 16), plan.from_config(c, {"method.qk_dim": "8,16"}).runs))
  assert "method.qk_dim cannot be traced" in group.untraceable(members)
  betas = tuple(group.Member(f"b{b}", "", r.config, {"method.beta": b}) for b, r in
                zip(BETAS, plan.from_config(c, {"method.beta": "20,80"}).runs))
  assert group.untraceable(betas) is None


def _imports(path: str, package: str) -> set[str]:
  """The afd_jax modules a source file imports anywhere (function bodies included)."""
  tree = ast.parse(open(path, encoding="utf-8").read())
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name.startswith(package))
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      if node.module.startswith(package):
        out.add(node.module)
        out.update(f"{node.module}.{a.name}" for a in node.names)
  return out


def test_no_import_circle_in_the_package():
  """Every import in afd_jax (lazy ones included) forms a graph without cycles."""
  pkg = os.path.join(ROOT, "afd_jax")
  modules = {}
  for dirpath, _, files in os.walk(pkg):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(dirpath, f), ROOT)[:-3].replace(os.sep, ".")
        modules[rel.removesuffix(".__init__")] = os.path.join(dirpath, f)
  graph = {m: {i for i in _imports(p, "afd_jax") if i in modules and i != m}
           for m, p in modules.items()}
  # A package's __init__ importing its own submodules is not a cycle of behaviour.
  for m in graph:
    graph[m] = {i for i in graph[m] if not (m in modules and i.startswith(m + "."))}
  state, cycles = {}, []

  def visit(m, stack):
    state[m] = 1
    for n in sorted(graph[m]):
      if state.get(n) == 1:
        cycles.append(stack[stack.index(n):] + [n])
      elif n not in state:
        visit(n, stack + [n])
    state[m] = 2

  for m in sorted(graph):
    if m not in state:
      visit(m, [m])
  assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("map_members,member_seeds", [(False, (0, 1)), (True, (0, 0))],
                         ids=["vmap_two_seeds", "side_by_side_one_seed"])
def test_traced_lr_and_weight_decay_members_equal_runs_of_those_values(map_members,
                                                                        member_seeds):
  """Two members whose optim.lr and optim.weight_decay are traced values, batched by
  jax.vmap (GPUs/TPUs) with their own seeds (inits and batches), or side by side (CPU) of
  one seed, drawing their shared batch once: 2 steps of each equal the plain device
  steps of a network built with those values as Python constants, from its seed."""
  import functools  # pylint: disable=g-import-not-at-top

  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from afd_jax import group, multi_step, parallel, train_state  # pylint: disable=g-import-not-at-top
  from config_loading import tiny_device_setup  # pylint: disable=g-import-not-at-top
  nets, sampler, data = tiny_device_setup()
  config = tiny_config(None)
  values = {"optim.lr": [0.05, 0.2], "optim.weight_decay": [5e-4, 5e-2]}
  build = functools.partial(train_state.build_networks, config, 10, 2)
  states = group.create_states(nets, member_seeds, 32)
  batch_of = (0, 0) if member_seeds == (0, 0) else (0, 1)
  together, metrics = jax.jit(functools.partial(
      group.vmapped_steps, nets, sampler, 2, member_nets=lambda hp: build(hparams=hp),
      map_members=map_members, batch_of=batch_of))(
          states, data, jnp.array(member_seeds, jnp.int32), None,
          hparams={k: jnp.asarray(v) for k, v in values.items()})
  sharded = parallel.batch_sharded(parallel.make_mesh(1))
  for k, seed in enumerate(member_seeds):
    own = build(hparams={p: v[k] for p, v in values.items()})
    alone = jax.jit(functools.partial(multi_step.device_steps, own, sampler, sharded, 2, 16))
    state, m = alone(train_state.create(own, jax.random.PRNGKey(seed), image_size=32),
                     data, jnp.int32(seed), None)
    mine = group.unstack(together, k)
    chex.assert_trees_all_close(mine.params, state.params, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(metrics["lr"][:, k], m["lr"], rtol=1e-6)
    np.testing.assert_allclose(metrics["loss"][:, k], m["loss"], rtol=1e-5)
  # The two members' values really differ in what they did.
  assert not np.allclose(*(jax.tree.leaves(together.params)[0][k] for k in (0, 1)))


def test_a_groups_fresh_state_has_the_step_type_of_a_restored_one(digits_data_dir):
  """The stacked fresh state's step is a strong int32, as a checkpoint restores it: a weak
  one (flax's ``step=0``) made a resumed group compile its step programs again (16 s
  each here, minutes for a real model)."""
  import functools  # pylint: disable=g-import-not-at-top

  from afd_jax import group, train_state  # pylint: disable=g-import-not-at-top
  c = _afd_config(digits_data_dir, seeds=SEEDS, vmap_seeds=True)
  members = tuple(group.Member(r.name, "", r.config, {}) for r in plan.from_config(c).runs)
  build = functools.partial(train_state.build_networks, num_classes=10, steps_per_epoch=4)
  create = group.stacked_create(members)(None, build)
  step = jax.eval_shape(functools.partial(create, image_size=32), jax.random.PRNGKey(0)).step
  assert step.shape == (2,) and step.dtype == np.int32 and not step.weak_type


def test_model_init_may_name_a_plan_run_trained_first_and_not_tabulated(tmp_path):
  """The segmentation quickstart's ``model.init='{workdir}/pretrain_*'``: those runs
  train first (one seed), resolve to the plan's workdir, are needed by the runs starting
  from them, and are no row of the table; a reference to a later run is an error."""
  suite = load("seg_quickstart.py", "methods=tat")
  p = plan.from_config(suite)
  names = [r.name for r in p.runs]
  assert names[:3] == ["pretrain_teacher", "pretrain_student", "teacher"]
  runs = {r.name: r for r in p.runs}
  assert runs["pretrain_teacher"].pairs == () and runs["pretrain_student"].pairs == ()
  assert runs["teacher"].needs == ("pretrain_teacher",)
  assert runs["student/seed_1"].needs == ("pretrain_student",)
  assert set(runs["student_tat/seed_2"].needs) == {"teacher", "pretrain_student"}
  assert p.dataset == "digits_seg"
  root = str(tmp_path)
  for r in p.runs:
    plan._resolve_teacher(r, root)  # pylint: disable=protected-access
  assert runs["student_tat/seed_0"].config.model.init == os.path.join(root,
                                                                        "pretrain_student")
  assert runs["teacher"].config.model.init == os.path.join(root, "pretrain_teacher")
  suite.run_order = ("pretrain_teacher", "teacher", "student", "pretrain_student",
                     "student_tat")
  with pytest.raises(ValueError, match=r"run 'student' needs run 'pretrain_student' "
                     r"\(model.init\) first"):
    plan.from_config(suite)
  suite.run_order = ("pretrain_teacher", "teacher", "student", "student_tat")
  with pytest.raises(ValueError, match=r"names run 'pretrain_student', not in run_order"):
    plan.from_config(suite)
