"""Host malloc tuning: applied where a run starts, reversible by environment; no page faults."""

import os
import subprocess
import sys
import textwrap

import pytest

from facekp_jax.core import host_memory

_PROBE = textwrap.dedent("""
    from facekp_jax.core import host_memory
    tuned = host_memory.reuse_freed_memory()  # Before JAX starts its CPU client, as a run does.
    import resource, statistics, jax, jax.numpy as jnp
    f = jax.jit(lambda x: (jnp.tanh(x) @ jnp.tanh(x).T[:, :8]).sum())  # A 64 MB temporary.
    x = jnp.ones((4096, 4096))
    for _ in range(5): f(x).block_until_ready()
    faults = []
    for _ in range(15):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      f(x).block_until_ready()
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(tuned, statistics.median(faults))
""")


def _probe(**env):
  out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True,
                       env={**os.environ, **env}).stdout.split()
  return out[0] == "True", float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning only")
def test_tuned_malloc_reuses_large_temporaries():
  tuned, faults = _probe()
  untuned, faults_default = _probe(**{host_memory.OPT_OUT_VARIABLE: "1"})
  assert tuned and not untuned
  # glibc's default maps a fresh 64 MB block per call: 16,384 page faults.
  assert faults_default > 10_000
  # Tuned, most calls reuse the block (an occasional call still maps a fresh one).
  assert faults < 1_000
