"""The host allocator policy: steps stop page-faulting their temporary memory back in."""
import json
import subprocess
import sys
import textwrap

import pytest

from prompt_tuning.engine import gin_utils, host_memory

# One process per policy: the policy must be set before JAX starts, and it cannot be undone.
# The jitted function keeps two 64 MB intermediates alive at once, so every call needs a 128 MB
# temporary block from the C allocator (about 32,000 pages of 4 KB). The kernel may still reclaim
# idle pages between calls on its own (proactive reclaim on some VMs), so the reuse check looks
# at the best of several calls: under `system` no call ever avoids the faults.
_PROBE = textwrap.dedent("""
    import json, resource, sys
    from prompt_tuning.engine import host_memory
    changed = host_memory.configure(sys.argv[1])
    import jax, jax.numpy as jnp

    @jax.jit
    def f(x):
      a, b = jax.lax.optimization_barrier((jnp.sin(x), jnp.cos(x)))
      return jnp.sum(a * b)

    x = jnp.ones((4096, 4096), jnp.float32)
    f(x).block_until_ready()
    faults = []
    for _ in range(12):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      f(x).block_until_ready()
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"changed": changed, "faults": faults,
                      "policy": host_memory.applied_policy()}))
""")


def _probe(policy: str) -> dict:
  out = subprocess.run([sys.executable, "-c", _PROBE, policy], capture_output=True, text=True,
                       check=True, timeout=300)
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(host_memory._glibc() is None,
                    reason="the policy only changes glibc's allocator (Linux)")
def test_reuse_policy_removes_per_step_page_faults():
  system, reuse = _probe("system"), _probe("reuse")
  assert system == {"changed": False, "faults": system["faults"], "policy": "system"}
  assert reuse["changed"] and reuse["policy"] == "reuse"
  # Without the policy every call faults the 128 MB block back in; with it, nearly nothing.
  assert min(system["faults"]) > 25_000
  assert min(reuse["faults"]) < 0.05 * min(system["faults"])


def test_unknown_policy_is_one_clear_error():
  with pytest.raises(ValueError, match="Unknown host allocator policy 'fast'"):
    host_memory.configure("fast")


def test_entry_point_flag_defaults_to_reuse_and_rejects_unknown_values():
  assert gin_utils.parse_flags([], prog="t", description="").host_allocator == "reuse"
  flags = gin_utils.parse_flags(["--host_allocator=system"], prog="t", description="")
  assert flags.host_allocator == "system"
  with pytest.raises(gin_utils.ConfigError, match="host_allocator"):
    gin_utils.parse_flags(["--host_allocator=fast"], prog="t", description="")
