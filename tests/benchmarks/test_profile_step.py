"""The step profiler's plumbing: HLO parsing, operation classes, and a traced tiny step."""
import re

import jax
import jax.numpy as jnp

from benchmarks import profile_step


def _compiled_text():
  def fn(a, b, table, ids):
    product = jnp.dot(a, b, preferred_element_type=jnp.float32)  # a product
    rounded = product.astype(jnp.bfloat16)  # a convert of its own (the product is its input)
    rows = jnp.take(table, ids, axis=0)  # a gather
    return rounded, jnp.sum(jnp.exp(product), axis=-1), rows.T + 1.0
  args = (jnp.ones((64, 32), jnp.bfloat16), jnp.ones((32, 48), jnp.bfloat16),
          jnp.ones((100, 16), jnp.float32), jnp.arange(8))
  return jax.jit(fn).lower(*args).compile().as_text()


def test_every_executed_instruction_is_classed_and_the_product_is_a_dot():
  computations, by_name = profile_step.parse_module(_compiled_text())
  entry = [c for c in computations if c.startswith("main")]
  assert entry, list(computations)
  classes = {}
  for inst in computations[entry[0]]:
    if inst.opcode not in ("parameter", "tuple", "constant", "bitcast", "get-tuple-element"):
      classes[inst.name] = profile_step.classify(inst, computations)
  assert set(classes.values()) <= set(profile_step.CLASSES)
  assert "dot" in classes.values()
  assert "gather/scatter" in classes.values()
  dots = [by_name[n] for n, k in classes.items() if k == "dot"]
  flops, desc = profile_step.dot_flops(dots[0], computations, by_name)
  assert flops == 2 * 64 * 32 * 48
  assert desc == "bf16[64, 32] x bf16[32, 48] -> f32[64, 48]"


def test_quick_profile_prints_a_share_table_that_sums_to_the_traced_time(capsys):
  profile_step.main(["--quick", "--dtypes", "bfloat16", "--top", "3"])
  out = capsys.readouterr().out
  table = out[out.index("time by class"):]
  shares = [float(share) for share in re.findall(r"\(([\d.]+)%\)", table)]
  assert len(shares) == len(profile_step.CLASSES)
  assert abs(sum(shares) - 100.0) < 0.5  # every traced operation lands in exactly one class
  assert "products by shape" in out
  ceiling = re.search(r"Products: ([\d.]+) GFLOP a step, (\d+) ms in the traced step .*"
                      r"at their standalone rates (\d+) ms", out)
  assert ceiling and float(ceiling.group(1)) > 0 and int(ceiling.group(3)) >= 0
  assert "% of the" in out  # the quick run measures a (small) matmul peak too


def test_ceiling_line_turns_standalone_product_time_into_an_mfu_bound():
  line = profile_step.ceiling_line((330e9, 0.9, 0.6), 0.76, 800e9)
  assert "330 GFLOP a step, 900 ms in the traced step (760 ms wall)" in line
  assert "at their standalone rates 600 ms, 550 GFLOP/s = 68.8% of the 800 GFLOP/s" in line
  assert "matmul peak" not in profile_step.ceiling_line((330e9, 0.9, 0.6), 0.76, None)
