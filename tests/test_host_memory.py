"""Host malloc tuning: applied on import, reversible by environment, and it removes page faults."""

import os
import subprocess
import sys
import textwrap

import pytest

from facekp_jax import host_memory

_PROBE = textwrap.dedent("""
    import resource, jax, jax.numpy as jnp, facekp_jax
    f = jax.jit(lambda x: (jnp.tanh(x) @ jnp.tanh(x).T[:, :8]).sum())  # A 64 MB temporary.
    x = jnp.ones((4096, 4096))
    for _ in range(5): f(x).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10): f(x).block_until_ready()
    print(facekp_jax.HOST_MALLOC_TUNED, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _probe(**env):
  out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True,
                       env={**os.environ, **env}).stdout.split()
  return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning only")
def test_tuned_malloc_reuses_large_temporaries():
  tuned, faults = _probe()
  untuned, faults_default = _probe(**{host_memory.OPT_OUT_VARIABLE: "1"})
  assert tuned and not untuned
  # glibc default: ~16,000 faults per call for a fresh 64 MB block; tuned: reused.
  assert faults_default > 10 * 16_000 * 0.5
  assert faults < faults_default / 20
