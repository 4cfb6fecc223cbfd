"""Train throughput by input path, steps per dispatch and vmapped seeds.

    python experiments/benchmark.py        # wrn_40_2→wrn_16_2 and resnet32x4→resnet8x4
    python experiments/benchmark.py --pairs=resnet8:resnet8 --methods=kd --steps=4

For every teacher→student pair and method (none/kd/afd by default), on synthetic
CIFAR-100-shaped uint8 data of `--num-examples` images and the real jitted train step of
`afd_jax.train` (random-init teacher) over all local devices, three modes:

* (a) one seed, one step per dispatch, batches fed from the host: a tf.data pipeline
  with the CIFAR augmentation (`transforms.pad_crop_flip`) as in training, or, when
  TensorFlow is absent, pre-made numpy batches (the feed is named in the table);
* (b) device-resident data (`afd_jax.device_data`), k steps per dispatch for each k of
  `--ks` (the best k is reported);
* (c) `--seeds` seeds vmapped in one program (`afd_jax.group`) at that best k.

Each mode is compiled (time reported), warmed up once, then timed over `--steps` steps
(dispatches are not waited for one by one: that is the point of the device path).
images/s counts every seed's images; "× (a)" is the ratio to mode (a) of the same pair
and method in this run; the projection is the wall time of 240 CIFAR-100 epochs of 782
steps (all seeds together for (c)). Writes JSON and a Markdown table (`--out`, `.md`).

``--step_times`` times instead one train step of every method of ``--methods`` (``all``:
every registered method) on each pair, on device-resident data, one step per dispatch:
the fastest of ``--steps`` steps timed one by one (robust to other load; the median is
shown too), with its ratio to KD's step in the same run (two-stage methods: their
distillation step):

    python experiments/benchmark.py --step_times --methods=all --pairs=wrn_40_2:wrn_16_2

``--sweep=N`` times instead N members of a vmapped group (`afd_jax.group`: a β × seed grid
of ``--sweep_field``, traced in one program) against one run of the same method, both on
device-resident data at ``--ks``' first k; the point is the ratio of their step times
(the goal on a GPU: N=8 in at most 3× one run's time):

    python experiments/benchmark.py --sweep=8 --pairs=wrn_40_2:wrn_16_2 --methods=afd

``--segmentation`` times instead the train step of DeepLabV3+ students (ResNet-101
teacher, random init) with each method of ``--seg_methods`` against the plain student
step (method ``none``, no teacher) in the same run: ``--seg_students`` at crop ``--crop``
and batch ``--batch`` (the release: 513 and 16 on an accelerator; smaller on a CPU), on a
fixed synthetic batch already on the devices. Reports the fastest and median step, the
ratio to the plain step, and the compiled step's peak device memory
(``memory_analysis()``: arguments + outputs + temporaries − aliased):

    python experiments/benchmark.py --segmentation --crop=513 --batch=16
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from afd_jax import (device_data, group, methods, multi_step, parallel,  # noqa: E402
                     steps, train_state)
from afd_jax import transforms  # noqa: E402
from configs import common  # noqa: E402

NUM_CLASSES, EPOCHS, STEPS_PER_EPOCH = 100, 240, 782


def host_batches(images, labels, batch: int):
  """Endless normalised batches from the host: tf.data + augmentation, else numpy."""
  mean, std = transforms.CIFAR100_MEAN, transforms.CIFAR100_STD
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    rng = np.random.default_rng(0)
    x = ((images[:batch] / 255.0 - np.asarray(mean)) / np.asarray(std)).astype(np.float32)
    fixed = {"image": x, "label": labels[:batch]}
    fixed["index"] = np.arange(batch, dtype=np.int32)
    return "host numpy", iter(lambda: dict(fixed, label=rng.permutation(fixed["label"])),
                              None)
  tf.config.set_visible_devices([], "GPU")
  ds = tf.data.Dataset.from_tensor_slices((images, labels)).repeat().enumerate().map(
      lambda i, ex: {"image": transforms.normalise(transforms.pad_crop_flip(
          ex[0], tf.stack([tf.constant(0, tf.int64), i]), 32), mean, std),
                     "label": ex[1],
                     "index": tf.cast(i % len(labels), tf.int32)},
      num_parallel_calls=tf.data.AUTOTUNE)
  return "tf.data", ds.batch(batch, drop_remainder=True).prefetch(8).as_numpy_iterator()


def timed(call, state, steps: int, per_call: int):
  """(state, seconds) of `steps // per_call` calls after one warm-up (compile) call."""
  t0 = time.perf_counter()
  state, _ = call(state)
  jax.block_until_ready(state)
  compile_s, t0 = time.perf_counter() - t0, time.perf_counter()
  for _ in range(max(1, steps // per_call)):
    state, metrics = call(state)
  jax.block_until_ready((state, metrics))
  return compile_s, (time.perf_counter() - t0) / (max(1, steps // per_call) * per_call)


def setup(teacher: str, student: str, method: str, args, images, labels):
  """(nets, mesh, create, teacher_vars, sampler, data) of one pair and method."""
  if method == "none":
    config = common.teacher_config("cifar100", None, student)
  else:
    config = common.distill_config("cifar100", method, None, teacher, student)
  nets = train_state.build_networks(config, NUM_CLASSES, STEPS_PER_EPOCH,
                                    train_labels=labels)
  mesh = parallel.make_mesh(None)
  rep = parallel.replicated(mesh)
  create_fn = functools.partial(train_state.create, nets, image_size=32)
  create = jax.jit(create_fn, out_shardings=parallel.state_sharding(
      mesh, jax.eval_shape(create_fn, jax.random.PRNGKey(0))))
  teacher_vars = None
  if nets.teacher is not None:
    teacher_vars = jax.jit(functools.partial(train_state.random_teacher_variables, nets,
                                             32), out_shardings=rep)(jax.random.PRNGKey(1))
  sampler = device_data.Sampler(len(labels), args.batch, transforms.CIFAR100_MEAN,
                                transforms.CIFAR100_STD)
  data = jax.device_put({"image": images, "label": labels}, rep)
  return nets, mesh, create, teacher_vars, sampler, data


def step_time_rows(teacher: str, student: str, names, args, images, labels) -> list:
  """One train step of each method in `names` (device data, k = 1): the fastest of
  ``--steps`` steps timed one by one (and their median); ratio to KD's."""
  rows = []
  for method in names:
    nets, mesh, create, teacher_vars, sampler, data = setup(teacher, student, method, args,
                                                           images, labels)
    state = create(jax.random.PRNGKey(0))
    dispatch = multi_step.Dispatcher(nets, mesh, teacher_vars, sampler=sampler, data=data,
                                     state_sharding=parallel.state_sharding(mesh, state))
    t0 = time.perf_counter()
    state, _ = dispatch(state, 1)
    jax.block_until_ready(state)
    compile_s, times = time.perf_counter() - t0, []
    for _ in range(max(1, args.steps)):  # each step timed alone: the minimum is robust
      t0 = time.perf_counter()          # to other load on a shared machine
      state, metrics = dispatch(state, 1)
      jax.block_until_ready((state, metrics))
      times.append(time.perf_counter() - t0)
    step_s = min(times)
    rows.append({"pair": f"{teacher}→{student}", "method": method, "compile_s": compile_s,
                 "ms_per_step": step_s * 1e3, "median_ms": float(np.median(times)) * 1e3,
                 "images_per_s": args.batch / step_s})
    print(f"  {teacher}→{student} {method}: {step_s * 1e3:.1f} ms/step "
          f"(compile {compile_s:.1f} s)", flush=True)
  kd = next((r["ms_per_step"] for r in rows if r["method"] == "kd"), None)
  for r in rows:
    r["vs_kd"] = r["ms_per_step"] / kd if kd else float("nan")
  return rows


def bench_method(teacher: str, student: str, method: str, args, images, labels) -> list:
  """Rows of modes (a), (b) for each k and (c) for one pair and method."""
  nets, mesh, create, teacher_vars, sampler, data = setup(teacher, student, method, args,
                                                         images, labels)
  rows, name = [], f"{teacher}→{student}" if nets.teacher is not None else student

  def row(mode, k, n_seeds, compile_s, step_s, feed):
    ips = n_seeds * args.batch / step_s
    rows.append({"pair": f"{teacher}→{student}", "method": method, "mode": mode, "k": k,
                 "seeds": n_seeds, "feed": feed, "images_per_s": ips,
                 "compile_s": compile_s, "ms_per_step": step_s * 1e3,
                 "projected_h": EPOCHS * STEPS_PER_EPOCH * n_seeds * args.batch / ips / 3600})
    print(f"  {name} {method} {mode} k={k} seeds={n_seeds}: {ips:.0f} images/s", flush=True)

  feed, batches = host_batches(images, labels, args.batch)
  fed = multi_step.Dispatcher(nets, mesh, teacher_vars, batches=parallel.prefetch_to_device(
      batches, 2, parallel.batch_sharded(mesh)))
  row("(a) host-fed", 1, 1, *timed(lambda s: fed(s, 1), create(jax.random.PRNGKey(0)),
                                   args.steps, 1), feed)
  on_device = multi_step.Dispatcher(nets, mesh, teacher_vars, sampler=sampler, data=data)
  for k in args.ks:
    row("(b) device", k, 1, *timed(lambda s, k=k: on_device(s, k),
                                   create(jax.random.PRNGKey(0)), args.steps, k), "device")
  best = min((r for r in rows if r["mode"] == "(b) device"), key=lambda r: r["ms_per_step"])
  if args.seeds:
    k, ids = best["k"], jnp.arange(args.seeds, dtype=jnp.int32)
    program = jax.jit(functools.partial(group.vmapped_steps, nets, sampler, k),
                      donate_argnums=(0,))
    row(f"(c) {args.seeds} seeds", k, args.seeds, *timed(
        lambda s: program(s, data, ids, teacher_vars),
        group.create_states(nets, range(args.seeds), 32), args.steps, k), "device")
  base = rows[0]["images_per_s"]
  for r in rows:
    r["vs_a"] = r["images_per_s"] / base
  return rows


def sweep_rows(teacher: str, student: str, method: str, args, images, labels) -> list:
  """One run vs ``--sweep`` vmapped members (k steps per dispatch, device data)."""
  nets, mesh, create, teacher_vars, sampler, data = setup(teacher, student, method, args,
                                                         images, labels)
  config = common.distill_config("cifar100", method, None, teacher, student)
  section, _, name = args.sweep_field.partition(".")
  base = float(getattr(methods.resolve(config.method), name) if section == "method"
               else config[section][name])
  n, k = args.sweep, args.ks[0]
  values = [base * 2.0 ** (i // 2) for i in range(n)]  # (β, 2β, 4β, ...) × seeds 0 and 1
  ids = jnp.asarray([i % 2 for i in range(n)], jnp.int32)
  hparams = {args.sweep_field: jnp.asarray(values, jnp.float32)}
  build = functools.partial(train_state.build_networks, config, NUM_CLASSES,
                            STEPS_PER_EPOCH, labels)
  one = multi_step.Dispatcher(nets, mesh, teacher_vars, sampler=sampler, data=data)
  compile_1, step_1 = timed(lambda s: one(s, k), create(jax.random.PRNGKey(0)),
                            args.steps, k)
  member_seeds = [i % 2 for i in range(n)]  # as `group` runs them: one batch and teacher
  batch_of = tuple(member_seeds.index(s) for s in member_seeds)  # forward per seed
  program = jax.jit(functools.partial(group.vmapped_steps, nets, sampler, k,
                                      member_nets=lambda hp: build(hparams=hp),
                                      batch_of=batch_of if n > 2 else None),
                    donate_argnums=(0,))
  compile_n, step_n = timed(
      lambda s: program(s, data, ids, teacher_vars, hparams=hparams),
      jax.device_put(group.create_states(nets, [i % 2 for i in range(n)], 32),
                     parallel.replicated(mesh)), args.steps, k)
  rows = []
  for members, compile_s, step_s in ((1, compile_1, step_1), (n, compile_n, step_n)):
    rows.append({"pair": f"{teacher}→{student}", "method": method, "members": members,
                 "k": k, "field": args.sweep_field, "compile_s": compile_s,
                 "ms_per_step": step_s * 1e3, "images_per_s": members * args.batch / step_s,
                 "time_vs_one": step_s / step_1})
    print(f"  {teacher}→{student} {method} {members} member(s): {step_s * 1e3:.1f} ms/step, "
          f"× one run's time {step_s / step_1:.2f}", flush=True)
  return rows


def _peak_bytes(compiled) -> float:
  """Peak device memory of a compiled program from XLA's memory analysis (nan if none)."""
  m = compiled.memory_analysis()
  if m is None:
    return float("nan")
  return float(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


def segmentation_rows(args) -> list:
  """TaT-seg (and `--seg_methods`) train steps vs the plain student step on DeepLabV3+."""
  from configs.voc import tat as voc_tat  # pylint: disable=g-import-not-at-top
  rows, mesh = [], parallel.make_mesh(None)
  rng = np.random.default_rng(0)
  classes, crop = 21, args.crop
  batch = {"image": jnp.asarray(rng.standard_normal((args.batch, crop, crop, 3)),
                                jnp.float32),
           "label": jnp.asarray(rng.integers(0, classes, (args.batch, crop, crop)),
                                jnp.int32)}
  batch = jax.device_put(batch, parallel.batch_sharded(mesh))
  for student in args.seg_students.split(","):
    plain = None
    for method in ["none"] + [m for m in args.seg_methods.split(",") if m]:
      config = voc_tat.get_config(f"student={student}")
      if method == "none":
        config.teacher.name = ""
        config.method = type(config.method)(dict(name="none"))
      elif method != "tat":
        config.method = type(config.method)(dict(name=method))
      config.data.image_size = crop
      config.model.init = ""
      nets = train_state.build_networks(config, classes, 662)
      create_fn = functools.partial(train_state.create, nets, image_size=crop)
      sharding = parallel.state_sharding(mesh, jax.eval_shape(create_fn,
                                                              jax.random.PRNGKey(0)))
      state = jax.jit(create_fn, out_shardings=sharding)(jax.random.PRNGKey(0))
      teacher_vars = None if nets.teacher is None else jax.jit(functools.partial(
          train_state.random_teacher_variables, nets, crop),
          out_shardings=parallel.replicated(mesh))(jax.random.PRNGKey(1))
      step = jax.jit(functools.partial(steps.train_step, nets), donate_argnums=(0,))
      t0 = time.perf_counter()
      compiled = step.lower(state, batch, teacher_vars).compile()
      compile_s, times = time.perf_counter() - t0, []
      state, _ = compiled(state, batch, teacher_vars)
      jax.block_until_ready(state)
      for _ in range(max(1, args.steps)):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch, teacher_vars)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
      step_s = min(times)
      row = {"pair": f"deeplabv3p_resnet101→{config.model.name}", "method": method,
             "crop": crop, "batch": args.batch, "compile_s": compile_s,
             "ms_per_step": step_s * 1e3, "median_ms": float(np.median(times)) * 1e3,
             "peak_gib": _peak_bytes(compiled) / 2**30}
      plain = plain or row["ms_per_step"]
      row["vs_plain"] = row["ms_per_step"] / plain
      rows.append(row)
      print(f"  {row['pair']} {method}: {step_s * 1e3:.1f} ms/step, "
            f"× plain {row['vs_plain']:.2f}, peak {row['peak_gib']:.2f} GiB "
            f"(compile {compile_s:.1f} s)", flush=True)
  return rows


def _table(rows, columns) -> str:
  """A Markdown table of `rows`: ``columns`` is ``[(header, row -> cell text), ...]``."""
  lines = ["| " + " | ".join(h for h, _ in columns) + " |",
           "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(cell(r) for _, cell in columns) + " |" for r in rows]
  return "\n".join(lines)


def step_time_markdown(rows) -> str:
  return _table(rows, [
      ("pair", lambda r: r["pair"]), ("method", lambda r: r["method"]),
      ("ms/step (min)", lambda r: f"{r['ms_per_step']:.1f}"),
      ("median", lambda r: f"{r['median_ms']:.1f}"),
      ("× KD step", lambda r: f"{r['vs_kd']:.2f}"),
      ("images/s", lambda r: f"{r['images_per_s']:.0f}"),
      ("compile s", lambda r: f"{r['compile_s']:.1f}")])


def sweep_markdown(rows) -> str:
  return _table(rows, [
      ("pair", lambda r: r["pair"]), ("method", lambda r: r["method"]),
      ("swept", lambda r: r["field"]), ("members", lambda r: str(r["members"])),
      ("k", lambda r: str(r["k"])), ("ms/step", lambda r: f"{r['ms_per_step']:.1f}"),
      ("images/s", lambda r: f"{r['images_per_s']:.0f}"),
      ("× one run's time", lambda r: f"{r['time_vs_one']:.2f}"),
      ("compile s", lambda r: f"{r['compile_s']:.1f}")])


def markdown(rows) -> str:
  return _table(rows, [
      ("pair", lambda r: r["pair"]), ("method", lambda r: r["method"]),
      ("mode", lambda r: r["mode"]), ("k", lambda r: str(r["k"])),
      ("feed", lambda r: r["feed"]), ("images/s", lambda r: f"{r['images_per_s']:.0f}"),
      ("× (a)", lambda r: f"{r['vs_a']:.2f}"),
      ("compile s", lambda r: f"{r['compile_s']:.1f}"),
      ("240 epochs (h)", lambda r: f"{r['projected_h']:.1f}")])


def segmentation_markdown(rows) -> str:
  return _table(rows, [
      ("pair", lambda r: r["pair"]), ("method", lambda r: r["method"]),
      ("crop", lambda r: str(r["crop"])), ("batch", lambda r: str(r["batch"])),
      ("ms/step (min)", lambda r: f"{r['ms_per_step']:.1f}"),
      ("median", lambda r: f"{r['median_ms']:.1f}"),
      ("× plain student", lambda r: f"{r['vs_plain']:.2f}"),
      ("peak GiB", lambda r: f"{r['peak_gib']:.2f}"),
      ("compile s", lambda r: f"{r['compile_s']:.1f}")])


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pairs", default="wrn_40_2:wrn_16_2,resnet32x4:resnet8x4")
  parser.add_argument("--methods", default="none,kd,afd")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--steps", type=int, default=48, help="timed steps per mode")
  parser.add_argument("--ks", default="1,4,16", help="steps per dispatch tried in (b)")
  parser.add_argument("--seeds", type=int, default=5, help="vmapped seeds in (c); 0: skip")
  parser.add_argument("--num-examples", type=int, default=50_000)
  parser.add_argument("--out", default="runs/benchmark.json")
  parser.add_argument("--step_times", action="store_true",
                      help="time one train step of every method (ratio to KD's)")
  parser.add_argument("--sweep", type=int, default=0,
                      help="time N vmapped members of a sweep against one run (ratio)")
  parser.add_argument("--sweep_field", default="method.beta",
                      help="the traced field of --sweep (method.<field>, optim.lr, ...)")
  parser.add_argument("--segmentation", action="store_true",
                      help="time DeepLabV3+ TaT-seg steps vs the plain student step")
  parser.add_argument("--seg_students", default="resnet18")
  parser.add_argument("--seg_methods", default="tat")
  parser.add_argument("--crop", type=int, default=513)
  args = parser.parse_args(argv)
  if args.segmentation:
    device = f"{jax.device_count()}x {jax.devices()[0].device_kind}"
    print(f"segmentation: batch {args.batch}, crop {args.crop}, {device}", flush=True)
    rows = segmentation_rows(args)
    print("\n" + segmentation_markdown(rows))
    return rows
  if args.methods == "all":
    args.methods = ",".join(methods.method_names())
  args.ks = [int(k) for k in args.ks.split(",")]
  device = f"{jax.device_count()}x {jax.devices()[0].device_kind}"
  print(f"batch {args.batch}, {device}, jax {jax.__version__}", flush=True)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (args.num_examples, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, NUM_CLASSES, args.num_examples).astype(np.int32)
  rows, names = [], list(filter(None, args.methods.split(",")))
  for pair in args.pairs.split(","):
    teacher, student = pair.split(":")
    if args.step_times:
      rows += step_time_rows(teacher, student, names, args, images, labels)
      continue
    if args.sweep:
      for method in names:
        rows += sweep_rows(teacher, student, method, args, images, labels)
      continue
    for method in names:
      rows += bench_method(teacher, student, method, args, images, labels)
  table = (step_time_markdown(rows) if args.step_times else
           sweep_markdown(rows) if args.sweep else markdown(rows))
  print("\n" + table)
  out = os.path.abspath(args.out)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w", encoding="utf-8") as f:
    json.dump({"batch": args.batch, "device": device, "host": platform.node(),
               "jax": jax.__version__, "steps": args.steps, "rows": rows}, f, indent=2)
  with open(os.path.splitext(out)[0] + ".md", "w", encoding="utf-8") as f:
    f.write(table + "\n")
  print(f"wrote {out}")
  return rows


if __name__ == "__main__":
  main()
