"""A vmapped group: runs that differ only in seed or in traced scalars, as one program.

`afd_jax.plan` forms the groups; this module trains one. Member k is an ordinary run's
config (``members[k].config``) whose ``seed`` and `hparams` (``{'method.beta': 100.0,
'optim.lr': 0.05, ...}``: numeric method fields, `train_state.OPTIMIZER_HPARAMS`) may
differ from the other members'; everything else is equal. Params, optimizer state,
BatchNorm statistics, method state and step are stacked on a leading axis S; member k is
initialised as its own run (``train_state.create`` of its own networks, key
``PRNGKey(seed)``) and draws its own run's batches (the device-resident split,
`device_data`; members of one seed draw that batch once and share the teacher's forward
on it), and its step is built with its values traced (`vmapped_steps`), so it
computes what its own run computes (to float rounding; tested to 1e-5).

The stacked state is one orbax checkpoint in the group's own workdir (resumes as any run,
``best/`` holds the best *mean* score). At eval times each member is evaluated in turn
(one compiled eval step for all). ``metrics.jsonl`` rows hold ``<member>/train/...`` and
``<member>/eval/...`` per member, ``eval/<metric>`` their mean and ``eval/<metric>_std``.
The method's eval analyses (e.g. AFD's link heatmap) run for each member as in its own
run, writing into the member's workdir (``links.png``) and under ``<member>/`` in the
group's TensorBoard log. When the group
finishes, each member's own workdir gets its ``config.json`` and ``result.json``, as if
it had run alone, so that a plan skips it like any finished run.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from afd_jax import (analysis, device_data, methods, metric_writer, multi_step, parallel,
                     steps, tasks, train, train_state)
from afd_jax import workdir as workdir_lib
from afd_jax.analysis import comparison


@dataclasses.dataclass(frozen=True)
class Member:
  """One run of a group: its name (for metrics), workdir, config and traced values."""
  name: str
  workdir: str
  config: ml_collections.ConfigDict
  hparams: dict[str, float]


# ------------------------------------------------------------------- step functions
# The states of S runs stacked on a leading axis, and so are their seeds and traced values
# (``{'method.beta': (S,), 'optim.lr': (S,), ...}``); member ``k`` computes what its own
# run computes (to float rounding).

def create_states(nets: train_state.Networks, seeds, image_size: int):
  """Fresh `TrainState`s of `seeds`, stacked: leaf shapes (S, ...); seed k's state is
  ``train_state.create(nets, PRNGKey(seeds[k]))``, as `train.open_run` makes it."""
  # A loop, not a vmap: initialisation draws 'rbg' bits, which vmap may change.
  create = jax.jit(functools.partial(train_state.create, nets, image_size=image_size))
  states = [create(jax.random.PRNGKey(s)) for s in seeds]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def vmapped_train_step(nets: train_state.Networks, sampler: device_data.Sampler, states,
                       data: dict[str, jax.Array], seeds: jax.Array, teacher_vars,
                       batch_sharding=None, member_nets=None, hparams=None,
                       map_members=False, size=None, batch_of=None):
  """One train step of every seed on the device-resident `data`.

  Args:
    nets: the runs' static `train_state.Networks` (one model, method and optimizer).
    sampler: the device-resident split's `device_data.Sampler`.
    states: stacked `TrainState`s (leading axis S).
    data: ``{'image': uint8 (N, H, W, 3), 'label': int32 (N,)}``, shared by all seeds.
    seeds: int32 (S,), each run's seed (its data order and augmentation).
    teacher_vars: the frozen teacher's variables (shared), or None.
    batch_sharding: each seed's batch split over the mesh (as `multi_step.device_steps`),
      or None (left to XLA).
    member_nets: ``member_nets(hparams of one member) -> Networks`` with those (traced)
      values (`train_state.build_networks`' ``hparams``); None: every member is `nets`.
    hparams: ``{path: (S,) array}``, the members' values (with `member_nets`).
    map_members: the members side by side (see `vmapped_steps`) instead of `jax.vmap`.
    size: the step's batch size (`device_data.Sampler.size`; None: the full batch).
    batch_of: static, ``batch_of[k]`` the first member with member k's seed: the batch
      and the teacher's forward on it are computed once per distinct seed and shared
      (the teacher in eval mode); None: each member draws its own.

  Returns:
    the new stacked states and metrics of shape (S,).
  """

  def draw(seed, step):
    batch = sampler.batch(data, seed, step, size)
    if batch_sharding is not None:
      batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    return batch

  def one(state, seed, hp, shared=None):
    member = nets if member_nets is None or not hp else member_nets(hp)
    if shared is None:
      return steps.train_step(member, state, draw(seed, state.step), teacher_vars)
    batch, teacher_out = shared
    return steps.train_step(member, state, batch, teacher_vars, teacher_out)

  hp, shared = hparams or {}, None
  if batch_of is not None:
    if getattr(nets.distiller, "teacher_train_mode", False):
      raise ValueError("batch_of shares the teacher's eval-mode forward; this method "
                       "runs its teacher in train mode")
    firsts = sorted(set(batch_of))
    step = states.step[0]  # a group's members are always at the same step
    drawn = {u: draw(seeds[u], step) for u in firsts}
    drawn = {u: (b, steps.teacher_outputs(nets, teacher_vars, b["image"]))
             for u, b in drawn.items()}
    shared = [drawn[u] for u in batch_of]
  if map_members:  # one member after another inside the program (see `vmapped_steps`)
    outs = [one(unstack(states, k), seeds[k], {p: v[k] for p, v in hp.items()},
                None if shared is None else shared[k]) for k in range(len(seeds))]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
  if shared is None:
    return jax.vmap(one)(states, seeds, hp)
  return jax.vmap(one)(states, seeds, hp, jax.tree.map(lambda *xs: jnp.stack(xs), *shared))


def vmapped_steps(nets, sampler, n: int, states, data, seeds, teacher_vars,
                  batch_sharding=None, member_nets=None, hparams=None, map_members=None,
                  size=None, batch_of=None):
  """`n` vmapped steps in one program (`multi_step.repeat`); metrics (n, S).

  `map_members`: the members' steps side by side in the program (unrolled: S copies of
  the step) instead of batched (`jax.vmap`); None: on CPU only, where XLA's batched
  convolutions (one weight per member) are many times slower than S plain ones.
  """
  if map_members is None:
    map_members = jax.default_backend() == "cpu"
  return multi_step.repeat(
      lambda s, _: vmapped_train_step(nets, sampler, s, data, seeds, teacher_vars,
                                      batch_sharding, member_nets, hparams, map_members,
                                      size, batch_of),
      states, n)


def unstack(states, k: int):
  """Seed `k`'s state out of the stacked `states`."""
  return jax.tree.map(lambda x: x[k], states)


# ------------------------------------------------------------------------- the group

def stacked_create(members: tuple[Member, ...]):
  """`train.open_run`'s ``make_create`` for the group: every member's fresh state,
  stacked (S, ...); member k is ``train_state.create(its own networks, PRNGKey(its
  seed))``, as its own run's (unrolled, not vmapped: the initialisation draws 'rbg' bits,
  which vmap may change)."""

  def make_create(nets, build):
    del nets
    own = [build(m.config) for m in members]

    def create(rng, image_size):
      del rng  # each member's own key
      states = [train_state.create(n, jax.random.PRNGKey(m.config.seed), image_size)
                for n, m in zip(own, members)]
      # One static part (apply_fn, tx) for the stack; each member's step uses its own tx.
      states = [s.replace(apply_fn=states[0].apply_fn, tx=states[0].tx) for s in states]
      stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
      # A strong int32 step, as a restored checkpoint's: a weakly typed one (flax's
      # `step=0`) made the resumed group compile its step programs a second time.
      return stacked.replace(step=stacked.step.astype(jnp.int32))

    return create

  return make_create


class Dispatcher:
  """``dispatcher(states, n) -> (states, metrics (n, S))``: n vmapped steps in one call
  (`multi_step.Dispatcher` for stacked states; one program per n and batch size, states
  donated; an epoch's partial last batch runs as its own program)."""

  def __init__(self, run: train.Run, members: tuple[Member, ...], member_nets):
    self.run, self.member_nets = run, member_nets
    self.rep, self.sharded = parallel.replicated(run.mesh), parallel.batch_sharded(run.mesh)
    self.seeds = jax.device_put(jnp.asarray([m.config.seed for m in members], jnp.int32),
                                self.rep)
    self.hparams = jax.device_put(
        {k: jnp.asarray([m.hparams[k] for m in members], jnp.float32)
         for k in members[0].hparams}, self.rep)
    self.programs = {}
    self.step: int | None = None  # the next global step (with partial batches)
    seeds = [m.config.seed for m in members]
    # Members of one seed draw one batch: it, and the teacher's forward on it, are shared.
    self.batch_of = (None if getattr(run.nets.distiller, "teacher_train_mode", False)
                     or len(set(seeds)) == len(seeds)
                     else tuple(seeds.index(s) for s in seeds))

  def program(self, n: int, size: int):
    if (n, size) not in self.programs:
      fn = functools.partial(vmapped_steps, self.run.nets, self.run.sampler, n,
                             batch_sharding=self.sharded, member_nets=self.member_nets,
                             size=size, batch_of=self.batch_of)
      self.programs[n, size] = jax.jit(
          lambda states, data, seeds, teacher, hp: fn(states, data, seeds, teacher,
                                                      hparams=hp),
          in_shardings=(self.rep,) * 5, out_shardings=(self.rep, self.rep),
          donate_argnums=(0,))
    return self.programs[n, size]

  def __call__(self, states, n: int):
    run, sampler = self.run, self.run.sampler
    if self.step is None:
      self.step = int(jax.device_get(states.step[0]))
    sizes = [sampler.size(s) for s in range(self.step, self.step + n)]
    self.step += n
    out = []
    for length, size in multi_step.pieces(sizes, n):
      states, metrics = self.program(length, size)(states, run.train_data, self.seeds,
                                                   run.teacher_vars, self.hparams)
      out.append(metrics)
    return states, (out[0] if len(out) == 1 else
                    jax.tree.map(lambda *ms: jnp.concatenate(ms), *out))


class _Gather:
  """A `metric_writer.MetricWriter` stand-in: one member's scalars, renamed."""

  def __init__(self, prefix: str, into: dict):
    self.prefix, self.into = prefix, into

  def write_scalars(self, step: int, values) -> None:
    del step
    self.into.update({self.prefix + k: float(v) for k, v in values.items()})


class _MemberWriter:
  """The group's writer as one member's analyses see it: every name under ``<member>/``."""

  def __init__(self, writer, name: str):
    self.writer, self.prefix = writer, f"{name}/"

  def write_scalars(self, step: int, values) -> None:
    self.writer.write_scalars(step, {self.prefix + k: v for k, v in values.items()})

  def write_images(self, step: int, images) -> None:
    self.writer.write_images(step, {self.prefix + k: v for k, v in images.items()})


def _member_analyses(run: train.Run, state, step: int, member: Member, evaluate,
                     writer) -> None:
  """The method's eval hooks (e.g. AFD's link heatmap) on one member's unstacked state."""
  hooks = run.nets.distiller.eval_hooks
  if not hooks:
    return
  if parallel.is_chief():
    os.makedirs(member.workdir, exist_ok=True)
  ctx = analysis.AnalysisContext(
      step=step, epoch=step // run.steps_per_epoch, workdir=member.workdir,
      config=member.config, distiller=run.nets.distiller,
      writer=_MemberWriter(writer, member.name),
      method_intermediates=lambda: run.probe(state, evaluate.first_batch(),
                                             run.teacher_vars),
      is_chief=parallel.is_chief())
  for hook in hooks:
    hook(ctx)


class _TrainLog:
  """Train metrics of every member, fetched once per log; each member through its own
  `metric_writer.TrainWindow` (its divergence check), one row: per member and mean."""

  def __init__(self, writer, names, batch_size: int):
    self.writer, self.names, self.metrics, self.row = writer, names, [], {}
    self.windows = [metric_writer.TrainWindow(_Gather(f"{n}/", self.row), batch_size)
                    for n in names]

  def write(self, step: int, bar) -> None:
    if not self.metrics:
      return
    got = jax.device_get(self.metrics)  # [{name: (n, S)}]
    self.metrics = []
    self.row.clear()
    for k, window in enumerate(self.windows):
      window.metrics = [{name: v[:, k] for name, v in m.items()} for m in got]
      window.write(step, bar)
    first = f"{self.names[0]}/"
    for name in [n[len(first):] for n in self.row if n.startswith(first)]:
      per = [self.row[f"{m}/{name}"] for m in self.names]
      self.row[name] = float(np.sum(per) if name.endswith("images_per_sec") else np.mean(per))
    self.writer.write_scalars(step, self.row)


def _evaluate(run: train.Run, states, step: int, members, evaluate, writer) -> None:
  """Evaluates each member's student; keeps per-member bests and the best mean checkpoint."""
  score, row, per = evaluate.score, {}, {}
  for k, m in enumerate(members):
    state = unstack(states, k)
    per[m.name] = evaluate(run.nets.student, train_state.student_variables(state))
    _member_analyses(run, state, step, m, evaluate, writer)
    row.update({f"{m.name}/eval/{key}": v for key, v in per[m.name].items()})
  for key in per[members[0].name]:
    v = [r[key] for r in per.values()]
    row[f"eval/{key}"], row[f"eval/{key}_std"] = comparison.mean_std(v)
  writer.write_scalars(step, row)
  logging.info("step %d (epoch %.2f): eval %s %s (mean %.2f)", step,
               step / run.steps_per_epoch, score,
               ", ".join(f"{n}: {r[score]:.2f}" for n, r in per.items()), row[f"eval/{score}"])
  best = run.meta.setdefault("best_members", {m.name: -1.0 for m in members})
  for n, r in per.items():
    best[n] = max(best[n], r[score])
  run.meta["last_eval_members"] = {n: dict(r, step=step) for n, r in per.items()}
  if row[f"eval/{score}"] > run.meta.get(f"best_{score}", -1.0):
    run.meta[f"best_{score}"] = row[f"eval/{score}"]
    run.ckpts.save_best(step, states, dict(run.meta, epoch=step / run.steps_per_epoch),
                        row[f"eval/{score}"])


def untraceable(members: tuple[Member, ...]) -> str | None:
  """Why the members' traced values cannot be traced through one train step (a field
  that sets a shape or drives Python control flow), or None when they can.

  Traces (abstractly, nothing computed) the first member's train step with its
  `Member.hparams` as traced scalars and checks the new state has the old structure.
  """
  paths = sorted(members[0].hparams)
  if not paths:
    return None
  config = copy.deepcopy(members[0].config)
  dataset = train.open_dataset(config)
  size = config.data.image_size = dataset.info.image_size
  spe = max(1, dataset.steps_per_epoch(config.batch_size))
  labels = (np.arange(dataset.info.num_train_examples) % dataset.info.num_classes
            if methods.needs_labels(config.method.name) else None)
  build = functools.partial(train_state.build_networks, config,
                            dataset.info.num_classes, spe, labels)
  nets = build()
  state = jax.eval_shape(functools.partial(train_state.create, nets, image_size=size),
                         jax.random.PRNGKey(0))
  b = config.batch_size
  label_shape = tasks.of_model(config.model.name).label_shape(b, size)
  batch = {"image": jax.ShapeDtypeStruct((b, size, size, 3), jnp.float32),
           "label": jax.ShapeDtypeStruct(label_shape, jnp.int32),
           "index": jax.ShapeDtypeStruct((b,), jnp.int32)}
  teacher = (train_state.abstract_teacher_variables(nets, size)
             if nets.teacher is not None else None)
  step = lambda hp, st, bt, tv: steps.train_step(build(hparams=hp), st, bt, tv)[0]  # noqa: E731
  try:
    new = jax.eval_shape(step, {p: jax.ShapeDtypeStruct((), jnp.float32) for p in paths},
                         state, batch, teacher)
  except (jax.errors.ConcretizationTypeError, jax.errors.TracerBoolConversionError,
          jax.errors.TracerIntegerConversionError, TypeError, ValueError) as e:
    return f"{', '.join(paths)} cannot be traced ({type(e).__name__})"
  if jax.tree.structure(new) != jax.tree.structure(state):
    return f"{', '.join(paths)} change the train state's structure"
  return None


def group_config(members: tuple[Member, ...]) -> ml_collections.ConfigDict:
  """The config a group's workdir records: the first member's, with every member's seed
  (``seeds``) — the traced values are in the workdir's name (`afd_jax.plan`)."""
  c = ml_collections.ConfigDict(members[0].config.to_dict())
  c.seeds = tuple(m.config.seed for m in members)
  return c


def train_group(members: tuple[Member, ...], workdir: str,
                allow_config_change: bool = False) -> dict[str, dict[str, Any]]:
  """Trains (or resumes) the group in `workdir`; writes each member's own result.

  Returns:
    ``{member name: its final metrics}`` (the keys of `train.train_and_evaluate`'s).

  Raises:
    ValueError: a two-stage method, or no device-resident split; all that
      `train.train_and_evaluate` raises.
  """
  config = members[0].config
  recorded = group_config(members)
  path, dataset = train.claim(recorded, workdir, allow_config_change)
  run = train.open_run(config, path, dataset=dataset, make_create=stacked_create(members))
  if run.nets.distiller.init_phase is not None or run.sampler is None:
    run.ckpts.close()
    why = (f"the two-stage method {config.method.name!r} has an init phase"
           if run.nets.distiller.init_phase is not None else
           f"config.data.pipeline={config.data.pipeline!r} chose tf.data for "
           f"{config.data.name!r}")
    raise ValueError(f"a vmapped group cannot train here: {why}; accepted: "
                     "config.vmap_seeds=False (the runs one after another), or a "
                     "one-stage method on a dataset the 'device' pipeline holds")

  def member_nets(hp):
    return run.build(config, hparams=hp)

  loop = train.begin(run, int(run.state.step[0]))
  logging.info("Resolved config (%d members vmapped: %s):\n%s", len(members),
               ", ".join(m.name for m in members), run.config)
  names = [m.name for m in members]
  try:
    train.run_steps(
        run, run.state, loop.start, loop.stop, Dispatcher(run, members, member_nets),
        _TrainLog(loop.writer, names, config.batch_size),
        lambda state, step: _evaluate(run, state, step, members, loop.evaluate,
                                      loop.writer))
  finally:
    loop.writer.close()
    run.ckpts.close()
  return _member_results(run, members, loop)


def _member_results(run: train.Run, members, loop: train.Loop
                    ) -> dict[str, dict[str, Any]]:
  """Each member's final metrics, written into its own workdir (chief) as a run's."""
  score, meta = loop.evaluate.score, run.meta
  seconds = run.saved_seconds if loop.stop > loop.start else meta["train_seconds"]
  out = {}
  for m in members:
    result = {"step": loop.stop, f"best_{score}": meta.get("best_members", {}).get(m.name,
                                                                                   -1.0),
              "train_seconds": seconds / len(members), "vmapped_with": len(members),
              **{k: v for k, v in meta.get("last_eval_members", {}).get(m.name, {}).items()
                 if k not in ("step", "loss")}}
    if f"teacher_{score}" in meta:
      result[f"teacher_{score}"] = meta[f"teacher_{score}"]
    if parallel.is_chief():  # the member's workdir: as its own finished run's
      os.makedirs(m.workdir, exist_ok=True)
      with open(os.path.join(m.workdir, workdir_lib.CONFIG_FILE), "w",
                encoding="utf-8") as f:
        json.dump(workdir_lib.resolved(m.config), f, indent=2)
      workdir_lib.write_result(m.workdir, result)
    out[m.name] = result
  return out
