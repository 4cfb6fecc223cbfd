"""Offline quickstart on the embedded `digits` dataset: teacher, student baseline, students
distilled with the chosen methods, and a results table.

Run (about 5 minutes on 2 idle CPU cores; nothing is downloaded):

    python -m afd_jax.main --config=configs/quickstart.py --workdir=runs/quickstart

The optional argument after ':' lists the distillation methods to compare (default
``kd``), e.g. the AFD variant and all methods, with three seeds per student:

    python -m afd_jax.main --config=configs/quickstart.py:afd --workdir=runs/quickstart
    python -m afd_jax.main --config=configs/quickstart.py:kd,afd,tat,aft_kd,hmat \
        --workdir=runs/digits_all --config.seeds='(0,1,2)'

Pair: resnet20 teacher (all 1,437 training images) -> resnet8 student (CIFAR ResNets,
AFD's "all blocks" feature selection). Students see only the first 500 training images,
so the teacher knows more than the student's data shows and distillation has something to
transfer; the test split has 360 images. Schedule: cosine from lr 0.2 (the CIFAR 0.05 is
too slow for 20-epoch runs), batch 64. Measured figures are in the project's notes.
"""
import ml_collections

from afd_jax import config_defaults

TEACHER, STUDENT = "resnet20", "resnet8"
# Per-method fields for digits; weights are the CIFAR defaults of each method unless noted.
METHOD_FIELDS = {
    "kd": dict(),
    "fitnet": dict(),
    "at": dict(),
    "afd": dict(beta=200.0, qk_dim=128),
    "tat": dict(),
    "aft_kd": dict(),
    "hmat": dict(),
}


def _digits_run(model: str, epochs: int, num_train_examples) -> ml_collections.ConfigDict:
  c = config_defaults.digits_config()
  c.model.name = model
  c.data.num_train_examples = num_train_examples
  c.schedule.num_epochs = epochs
  c.optim.lr = 0.2
  return c


def get_config(methods: str = "kd") -> ml_collections.ConfigDict:
  """Suite config; `methods` is a comma-separated list of method names."""
  names = [m for m in methods.split(",") if m]
  unknown = [m for m in names if m not in METHOD_FIELDS]
  if unknown:
    raise ValueError(f"quickstart methods {unknown} unknown; accepted: {list(METHOD_FIELDS)}")
  c = ml_collections.ConfigDict()
  c.seeds = (0,)
  c.single_seed_runs = ("teacher",)
  c.runs = ml_collections.ConfigDict()
  c.runs.teacher = _digits_run(TEACHER, epochs=12, num_train_examples=None)
  c.runs.student = _digits_run(STUDENT, epochs=20, num_train_examples=500)
  order = ["teacher", "student"]
  for name in names:
    run = _digits_run(STUDENT, epochs=20, num_train_examples=500)
    run.teacher.name = TEACHER
    run.teacher.checkpoint = "{workdir}/teacher"
    run.method = ml_collections.ConfigDict(dict(name=name, **METHOD_FIELDS[name]))
    c.runs[f"student_{name}"] = run
    order.append(f"student_{name}")
  c.run_order = tuple(order)
  return c
