"""One process of a localhost multi-process run (started by tests/test_multihost.py).

    python tests/multihost_worker.py <port> <num_processes> <process_id> <data_dir> \
        <workdir> <max_steps>
"""
import os
import sys

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                os.path.dirname(os.path.abspath(__file__))]
import xla_test_flags  # noqa: E402

os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=4 " +
                           xla_test_flags.COMPILE_FLAGS)
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")


def main(port, num_processes, process_id, data_dir, workdir, max_steps):
  jax.distributed.initialize(f"localhost:{port}", int(num_processes), int(process_id))
  from afd_jax import train  # noqa: E402  (after initialize)
  from test_multihost import multihost_config  # noqa: E402
  result = train.train_and_evaluate(multihost_config(data_dir, int(max_steps)), workdir)
  print("RESULT", jax.process_index(), jax.device_count(), result["step"], flush=True)


if __name__ == "__main__":
  main(*sys.argv[1:])
