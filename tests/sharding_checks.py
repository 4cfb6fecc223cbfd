"""The jit / no-jit / 8-device agreement check shared by the method tests."""
import chex
import jax
from jax.sharding import NamedSharding, PartitionSpec as P


def assert_eager_jit_and_sharded_agree(f, variables, data, rtol: float = 1e-5):
  """``f(variables, data)`` eagerly == jitted == jitted on 8 devices, `data` batch-sharded.

  Args:
    f: a function of (variables, data) returning a pytree of arrays.
    variables: replicated inputs (method variables).
    data: inputs whose leading axis is the batch (features, logits, labels).
  """
  assert jax.device_count() == 8, "tests/conftest.py must force 8 host devices"
  eager = f(variables, data)
  jitted = jax.jit(f)(variables, data)
  mesh = jax.make_mesh((8,), ("data",))
  sharded = jax.jit(f)(jax.device_put(variables, NamedSharding(mesh, P())),
                       jax.device_put(data, NamedSharding(mesh, P("data"))))
  chex.assert_trees_all_close(jitted, eager, rtol=rtol)
  chex.assert_trees_all_close(sharded, eager, rtol=rtol)
