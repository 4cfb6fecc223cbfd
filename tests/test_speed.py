"""GPU/TPU-first speed: no TensorFlow on the device path, bf16 losses (vmapped seeds and
swept values: test_plan.py)."""
import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from afd_jax import train_state
from afd_jax.methods import afd
from config_loading import tiny_config
import xla_test_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BLOCK_TF_AND_TORCH = textwrap.dedent("""
    import sys

    class Block:
      def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_datasets", "torch"):
          raise ImportError(f"{name} is blocked in this test")

    sys.meta_path.insert(0, Block())
    """)


@pytest.mark.slow
def test_training_and_the_benchmark_need_neither_tensorflow_nor_torch(tmp_path):
  """A fresh interpreter (what is imported can only be seen there), in which TensorFlow,
  TFDS and PyTorch cannot be imported: the package's training modules, checkpointing and
  the PyTorch interop module (which imports torch only inside its .pth readers and
  writers) import, and the benchmark runs, fed by its host NumPy path."""
  script = BLOCK_TF_AND_TORCH + textwrap.dedent(f"""
      import runpy
      import afd_jax, afd_jax.train, afd_jax.steps, afd_jax.device_data, afd_jax.group
      import afd_jax.models, afd_jax.methods, afd_jax.checkpointing, afd_jax.interop
      import afd_jax.interop.torch
      sys.argv = ["benchmark.py", "--pairs=resnet8:resnet8", "--methods=kd", "--steps=2",
                  "--batch=8", "--ks=1", "--seeds=0", "--num-examples=64",
                  "--out={tmp_path}/bench.json"]
      runpy.run_path("experiments/benchmark.py", run_name="__main__")
      assert not {{"tensorflow", "tensorflow_datasets", "torch"}} & set(sys.modules)
      """)
  out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                       text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu",
                                XLA_FLAGS=xla_test_flags.COMPILE_FLAGS))
  assert out.returncode == 0, out.stderr[-3000:]
  assert "| resnet8→resnet8 | kd | (b) device" in out.stdout, out.stdout
  assert "host numpy" in out.stdout  # (a) fed without tf.data when TF is absent
  assert os.path.exists(tmp_path / "bench.json") and os.path.exists(tmp_path / "bench.md")


def test_float16_is_refused_with_a_clear_error():
  c = tiny_config(None)
  c.model.dtype = "float16"
  with pytest.raises(ValueError, match="float16.*loss scaling.*bfloat16"):
    train_state.build_networks(c, 10, steps_per_epoch=2)


def test_bfloat16_afd_loss_is_float32_arithmetic_on_the_rounded_features():
  """A bf16 run keeps float32 where bf16's 8-bit mantissa would lose the result: the
  loss reductions (means over pixels and batch, the MSEs), the softmaxes (attention over
  links, CE/KD over classes), BatchNorm statistics and the meta-network's matmuls. Only the
  inputs are rounded: AFD given bf16 features and logits equals, to float32 precision,
  AFD given those rounded values as float32 (a reduction or softmax left in bf16 would be
  off by ~1e-3 relative).
  """
  rng = np.random.default_rng(0)
  s_shapes = [(8, 8, 8, 16), (8, 4, 4, 32)]
  t_shapes = [(8, 8, 8, 32), (8, 4, 4, 64)]
  s = [jnp.asarray(np.abs(rng.normal(size=x)), jnp.bfloat16) for x in s_shapes]
  t = [jnp.asarray(np.abs(rng.normal(size=x)), jnp.bfloat16) for x in t_shapes]
  logits = jnp.asarray(rng.normal(size=(8, 10)), jnp.bfloat16)
  labels = jnp.asarray(rng.integers(0, 10, 8), jnp.int32)
  module = afd.AFD(afd.Config())
  variables = module.init(jax.random.PRNGKey(0), s, t, logits, logits, labels, train=True)

  @functools.partial(jax.jit, static_argnums=0)
  def loss(dtype):
    cast = lambda xs: [x.astype(dtype) for x in xs]  # noqa: E731
    (value, metrics), _ = module.apply(variables, cast(s), cast(t), logits.astype(dtype),
                                       logits.astype(dtype), labels, train=True,
                                       mutable=["batch_stats"])
    return value, metrics

  (bf16, m_bf16), (f32, m_f32) = loss(jnp.bfloat16), loss(jnp.float32)
  assert bf16.dtype == jnp.float32 and all(m.dtype == jnp.float32 for m in m_bf16.values())
  np.testing.assert_allclose(bf16, f32, rtol=2e-6)
  for name in ("ce", "kd", "afd"):
    np.testing.assert_allclose(m_bf16[name], m_f32[name], rtol=2e-6, err_msg=name)
