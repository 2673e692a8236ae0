import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import resnet, tiny
from facekp_jax.model import resnet as models
from facekp_jax.training import config as config_lib
from tests.conftest import init_jitted


def test_seed_variant_has_the_keras_parameter_count():
  config = resnet.get_config()
  config.model.head = "regression"  # The seed's dense layers.
  model = models.create_model(config)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 96, 96, 1)),
                                             train=False))
  assert models.parameter_count(model) == 18_007_710
  assert shapes["params"]["dense1"]["kernel"].shape == (2048, 4096)  # 2x2x512 after pooling.


def test_tiny_variant_shapes_and_batch_stats():
  model = models.create_model(tiny.get_config())
  x = jnp.asarray(np.random.default_rng(0).random((3, 96, 96, 1), np.float32))
  variables = init_jitted(model, x, train=False)
  out, updates = jax.jit(lambda v: model.apply(v, x, train=True, rngs={
      "dropout": jax.random.key(1)}, mutable=["batch_stats"]))(variables)
  assert out.shape == (3, 30) and out.dtype == jnp.float32
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"],
                         updates["batch_stats"])
  assert all(jax.tree.leaves(changed))
  infer = jax.jit(lambda v: model.apply(v, x, train=False))
  np.testing.assert_allclose(infer(variables), infer(variables))


def test_output_is_linear_in_pixels_by_default_and_relu_on_request():
  config = tiny.get_config()
  config.model.head = "regression"
  x = jnp.zeros((2, 96, 96, 1))
  lin = models.create_model(config)
  variables = init_jitted(lin, x, train=False)
  # Push the output layer's bias far negative: a linear head follows it, a ReLU head clamps it.
  params = jax.tree.map(lambda a: a, variables["params"])
  params["output"]["bias"] = params["output"]["bias"] - 10.0
  v = {"params": params, "batch_stats": variables["batch_stats"]}
  out = jax.jit(lambda v: lin.apply(v, x, train=False))(v)
  assert float(out.max()) < 48.0 - 48.0 * 9
  config.model.output_activation = "relu"
  relu = models.create_model(config)
  out_relu = jax.jit(lambda v: relu.apply(v, x, train=False))(v)
  np.testing.assert_allclose(out_relu, 48.0)  # ReLU(negative) * 48 + 48: a dead output.


def test_unknown_output_activation_is_refused():
  config = tiny.get_config()
  config.model.head = "regression"
  config.model.output_activation = "tanh"
  with pytest.raises(ValueError, match="output_activation"):  # ConfigError, before a model.
    config_lib.check_config(config, num_devices=1)


def test_depth_width_and_third_stage_come_from_config():
  config = tiny.get_config()
  config.model.stage_filters = ((4, 4, 8), (8, 8, 16), (8, 8, 32))
  config.model.stage_blocks = (1, 2, 1)
  model = models.create_model(config)  # Shapes only: traced, never compiled.
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 96, 96, 1)),
                                        train=False))
  assert {"stage3_block1", "stage2_block2"} <= set(v["params"])
  assert "stage2_block3" not in v["params"]
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 96, 96, 1)), train=False), v)
  assert out.shape == (2, 30)


@pytest.mark.parametrize("conv_bias", [False, True])
def test_fast_ops_path_is_the_same_function_with_the_same_parameters(conv_bias):
  """Matmul convolutions and strided pools vs nn.Conv / nn.max_pool: outputs and gradients."""
  config = tiny.get_config()
  config.model.conv_bias = conv_bias
  config.model.stage_filters = ((8, 8, 16), (8, 16, 32))
  fast = models.create_model(config)
  config.model.fast_ops = False
  ref = models.create_model(config)
  x = jnp.asarray(np.random.default_rng(0).random((4, 96, 96, 1), np.float32))
  v = ref.init(jax.random.key(0), x, train=False)
  jax.tree.map(np.testing.assert_array_equal, v, fast.init(jax.random.key(0), x, train=False))

  def loss(model, params):
    out, _ = model.apply({"params": params, "batch_stats": v["batch_stats"]}, x, train=True,
                         rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"])
    return jnp.mean(jnp.square(out - 40.0)), out

  # Jitted, as training runs them (op by op, the reference path alone took over a minute).
  def grad(model):
    return jax.jit(jax.value_and_grad(lambda p: loss(model, p), has_aux=True))(v["params"])

  def infer(model):
    return jax.jit(lambda v: model.apply(v, x, train=False))(v)

  (_, out_ref), g_ref = grad(ref)
  (_, out_fast), g_fast = grad(fast)
  np.testing.assert_allclose(out_fast, out_ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(infer(fast), infer(ref), rtol=1e-4, atol=1e-4)
  # Relative to each leaf's largest gradient, floored for the biases before batch norm, whose
  # gradient is zero in exact arithmetic and pure rounding noise in float32.
  floor = 1e-2 * max(float(jnp.abs(a).max()) for a in jax.tree.leaves(g_ref))
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(g_ref)[0], jax.tree.leaves(g_fast)):
    scale = max(float(jnp.abs(a).max()), floor)
    np.testing.assert_allclose(b / scale, a / scale, atol=1e-4, err_msg=jax.tree_util.keystr(path))

