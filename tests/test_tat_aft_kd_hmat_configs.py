"""The TaT / AFT-KD / HMAT experiment configs load and build for the real models' features."""
import functools
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import pytest

from afd_jax import methods

models = pytest.importorskip("afd_jax.models")

ROOT = pathlib.Path(__file__).resolve().parents[1] / "configs"
PAIRS = [("wrn_40_2", "wrn_16_2"), ("resnet56", "resnet20"), ("resnet32x4", "resnet8x4"),
         ("vgg13", "vgg8"), ("resnet32x4", "ShuffleV2")]
CONFIGS = ([f"cifar100/{t}_{s}_{m}.py" for t, s in PAIRS for m in ("tat", "aft_kd", "hmat")]
           + ["imagenet/resnet34_resnet18_tat.py"])


def load(rel):
  spec = importlib.util.spec_from_file_location(rel.replace("/", "_")[:-3], ROOT / rel)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@functools.lru_cache(maxsize=None)
def feature_info(name: str, image_size: int) -> methods.FeatureInfo:
  """Shapes of a model's sown features at batch 2, by abstract evaluation only."""
  model = models.get_model(name, 100)
  x = jax.ShapeDtypeStruct((2, image_size, image_size, 3), jnp.float32)

  def features(x):
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    _, state = model.apply(variables, x, train=False, mutable=["intermediates"])
    return models.feature_list(state["intermediates"])
  shapes = jax.eval_shape(features, x)
  return methods.FeatureInfo(name, {k: tuple(v.shape) for k, v in shapes.items()})


@pytest.mark.parametrize("rel", CONFIGS)
def test_config_builds_its_method_on_the_real_features(rel):
  config = load(rel)
  method = next(m for m in ("aft_kd", "hmat", "tat") if rel.endswith(f"_{m}.py"))
  assert config.method.name == method
  assert config.teacher.checkpoint == f"runs/{config.data.name}/{config.teacher.name}"
  size = config.data.image_size
  student = feature_info(config.model.name, size)
  teacher = feature_info(config.teacher.name, size)
  d = methods.build_method(config.method, student=student, teacher=teacher, steps_per_epoch=781)
  s_feats = [jax.ShapeDtypeStruct(student.shapes[n], jnp.float32) for n in d.student_features]
  t_feats = [jax.ShapeDtypeStruct(teacher.shapes[n], jnp.float32) for n in d.teacher_features]
  logits = jax.ShapeDtypeStruct((2, 100), jnp.float32)
  labels = jax.ShapeDtypeStruct((2,), jnp.int32)
  variables = jax.eval_shape(functools.partial(d.module.init, train=True),
                             jax.random.PRNGKey(0), s_feats, t_feats, logits, logits, labels)
  (loss, _), _ = jax.eval_shape(
      functools.partial(d.module.apply, train=True, mutable=["batch_stats", "method_state"]),
      variables, s_feats, t_feats, logits, logits, labels)
  assert loss.shape == ()
  if method == "tat":  # the last stage of each net
    assert d.student_features[0] == [n for n in student.shapes if n.endswith(".out")][-1]
    assert d.teacher_features[0] == [n for n in teacher.shapes if n.endswith(".out")][-1]
  else:  # every stage, paired one to one
    assert len(d.student_features) == len(d.teacher_features) >= 3


def test_imagenet_tat_uses_the_released_weights():
  config = load("imagenet/resnet34_resnet18_tat.py")
  assert config.data.name == "imagenet2012"
  assert (config.model.name, config.teacher.name) == ("resnet18_imagenet",
                                                      "resnet34_imagenet")
  m = config.method
  assert (m.ce_weight, m.kd_weight, m.temperature, m.weight) == (0.5, 0.5, 1.0, 0.1)
