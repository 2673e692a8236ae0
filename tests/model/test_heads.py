"""The heatmap head: soft-argmax in pixels (the keypoints pixel-centre convention), shapes,
gradients, learning; and that the default regression head is untouched."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import resnet, tiny
from facekp_jax.core import errors, keypoints, sharding
from facekp_jax.core import faces as faces_lib
from facekp_jax.data import synthetic
from facekp_jax.model import heads, losses
from facekp_jax.model import resnet as models
from facekp_jax.training import config as config_lib
from facekp_jax.training import steps
from tests.conftest import init_jitted

K = keypoints.KAGGLE


def _heatmap_config(**model):
  config = tiny.get_config()
  config.model.head = "heatmap"
  for key, value in model.items():
    config.model[key] = value
  return config


def _peak(size, row, col, k=K.num_keypoints):
  logits = np.full((1, size, size, k), -50.0, np.float32)
  logits[0, row, col, :] = 50.0
  return jnp.asarray(logits)


def _gradients(model, variables, faces):
  """The parameters' gradients of the masked MSE of one training-mode pass."""

  def loss(params):
    out, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                         faces.images, train=True, mutable=["batch_stats"],
                         rngs={"dropout": jax.random.key(1)})
    return losses.masked_mse(out, faces.targets, faces.mask)

  return jax.jit(jax.grad(loss))(variables["params"])


def test_cell_centres_follow_the_pixel_centre_convention():
  np.testing.assert_allclose(heads.cell_centres(96), np.arange(96))
  np.testing.assert_allclose(heads.cell_centres(48)[:2], [0.5, 2.5])
  for size in (5, 24, 48):  # Symmetric about the image centre, 47.5, as x -> 95 - x needs.
    c = heads.cell_centres(size)
    np.testing.assert_allclose(c + c[::-1], keypoints.IMAGE_SIZE - 1, atol=1e-5)


@pytest.mark.parametrize("size,row,col,x,y", [(96, 10, 70, 70.0, 10.0), (96, 0, 95, 95.0, 0.0),
                                              (48, 5, 20, 40.5, 10.5)])
def test_soft_argmax_of_a_peaked_map_is_its_pixel(size, row, col, x, y):
  out = heads.soft_argmax(_peak(size, row, col))
  assert out.shape == (1, K.num_coords) and out.dtype == jnp.float32
  np.testing.assert_allclose(out[0, 0::2], x, atol=1e-4)  # Kaggle order: x0, y0, x1, y1, ...
  np.testing.assert_allclose(out[0, 1::2], y, atol=1e-4)


def test_soft_argmax_finds_a_sub_pixel_gaussian_per_keypoint():
  rng = np.random.default_rng(0)
  centres = rng.uniform(20, 75, (K.num_keypoints, 2))  # (x, y), away from the edges.
  g = np.arange(96.0)
  logits = np.stack([-((g[None, :] - cx) ** 2 + (g[:, None] - cy) ** 2) / (2 * 2.0 ** 2)
                     for cx, cy in centres], axis=-1)[None]
  out = np.asarray(heads.soft_argmax(jnp.asarray(logits, jnp.float32)))
  np.testing.assert_allclose(out[0], centres.reshape(-1), atol=1e-3)


def test_a_margin_extends_the_maps_beyond_the_frame():
  # 48 cells over the frame (2 px) and 16 px = 8 cells on each side: 64 cells over [-16.5, 111.5].
  assert heads.margin_cells(48, 16.0) == 8
  centres = np.asarray(heads.cell_centres(64, 16.0))
  np.testing.assert_allclose(centres[[0, 8, 55, 63]], [-15.5, 0.5, 94.5, 110.5])
  out = heads.soft_argmax(_peak(64, 63, 0), margin=16.0)
  np.testing.assert_allclose(out[0, 0::2], -15.5, atol=1e-4)  # Left of the frame,
  np.testing.assert_allclose(out[0, 1::2], 110.5, atol=1e-4)  # and below it.


def test_a_margin_lets_an_edge_peak_reach_the_frame_and_keeps_the_interior():
  features = np.full((1, 5, 5, K.num_keypoints), -8.0, np.float32)  # The seed's 5x5.
  eye = np.eye(K.num_keypoints, dtype=np.float32)
  kernel = {"params": {"keypoint_maps": {"kernel": eye,
                                         "bias": np.zeros(K.num_keypoints, np.float32)}}}

  def read(margin, row, col):
    f = features.copy()
    f[0, row, col] = 8.0
    return np.asarray(heads.HeatmapHead(48, margin).apply(kernel, jnp.asarray(f)))[0]

  plain, wide = read(0.0, 2, 4), read(16.0, 2, 4)  # Peaked on the rightmost feature cell.
  assert plain[0] < 92.0 < 95.5 < wide[0]  # Without a margin it cannot reach the edge.
  np.testing.assert_allclose(read(0.0, 2, 2), [47.5, 47.5] * K.num_keypoints, atol=0.05)
  np.testing.assert_allclose(read(16.0, 2, 2), read(0.0, 2, 2), atol=0.2)  # Centre: unchanged,
  np.testing.assert_allclose(plain[1], 47.5, atol=0.05)  # and no drift across the peak's axis.
  np.testing.assert_allclose(wide[1], 47.5, atol=0.05)


def test_heatmap_margin_model_shapes_and_its_config_check():
  model = models.create_model(_heatmap_config(heatmap_margin=16.0))
  x = jnp.asarray(np.random.default_rng(0).random((2, 96, 96, 1), np.float32))
  variables = init_jitted(model, x, train=False)
  assert variables["params"]["heatmap"]["keypoint_maps"]["kernel"].shape == (
      16, K.num_keypoints)  # The margin adds no parameters.
  out = np.asarray(jax.jit(lambda v: model.apply(v, x, train=False))(variables))
  assert out.shape == (2, K.num_coords)
  assert np.all((out > -16.5) & (out < 111.5))  # An expectation over frame and margin.
  for margin, ok in ((8.0, True), (3.0, False), (-2.0, False)):  # Whole 2 px cells only.
    problems = config_lib.problems(_heatmap_config(heatmap_margin=margin))
    assert (not problems) == ok, (margin, problems)


def test_a_mirrored_map_gives_the_mirrored_x():
  logits = jax.random.normal(jax.random.key(0), (2, 24, 24, K.num_keypoints)) * 3
  out, mirrored = heads.soft_argmax(logits), heads.soft_argmax(logits[:, :, ::-1])
  np.testing.assert_allclose(mirrored[:, 0::2], keypoints.IMAGE_SIZE - 1 - out[:, 0::2], atol=1e-4)
  np.testing.assert_allclose(mirrored[:, 1::2], out[:, 1::2], atol=1e-4)


def test_heatmap_model_shapes_and_parameters():
  model = models.create_model(_heatmap_config())
  x = jnp.asarray(np.random.default_rng(0).random((3, 96, 96, 1), np.float32))
  variables = init_jitted(model, x, train=False)
  params = variables["params"]
  assert "heatmap" in params and "output" not in params and "dense1" not in params
  assert params["heatmap"]["keypoint_maps"]["kernel"].shape == (16, K.num_keypoints)
  out = jax.jit(lambda v: model.apply(v, x, train=False))(variables)
  assert out.shape == (3, K.num_coords) and out.dtype == jnp.float32
  assert np.all((out >= 0) & (out <= keypoints.IMAGE_SIZE - 1))  # An expectation over the image.


def test_default_head_is_the_heatmap_head_and_old_configs_build_the_regression_head():
  config = resnet.get_config()
  assert config.model.head == "heatmap"  # The `head` ablation's winner on both data sets.
  # The stem's level too (issue 26: with the wing and map losses, -20.9 % / -17.3 % NME on
  # faces of another source; study `defaults` had two levels against one: 1.989 vs 2.079 px).
  assert config.model.heatmap_stages == 3
  model = models.create_model(config)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 96, 96, 1)),
                                             train=False))
  assert "heatmap" in shapes["params"] and "output" not in shapes["params"]
  saved = json.loads(config.to_json())
  del saved["model"]["head"]  # A config saved before the field existed builds what it trained,
  config = ml_collections.ConfigDict(config_lib.upgrade(saved))  # read as inference does.
  assert models.create_model(config).head == "regression"


def test_heatmap_gradients_are_finite_and_reach_the_stem():
  model = models.create_model(_heatmap_config())
  images, coords = synthetic.generate(4, seed=3)
  faces = faces_lib.from_arrays(images, coords)
  variables = init_jitted(model, faces.images, train=False)

  grads = _gradients(model, variables, faces)
  leaves = jax.tree.leaves(grads)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert float(jnp.abs(grads["stem_conv"]["kernel"]).max()) > 0


def test_a_few_heatmap_steps_reduce_the_loss():
  mesh = sharding.make_mesh()
  trainer = steps.Trainer(_heatmap_config(), mesh)
  state = trainer.init_state()
  faces = faces_lib.from_arrays(*synthetic.generate(8, seed=1))
  batch = sharding.to_global({"images": faces.images, "targets": faces.targets,
                              "mask": faces.mask}, mesh)
  losses = []
  for _ in range(15):
    state, metrics = trainer.train_step(state, batch)
    losses.append(float(metrics["sse"] / metrics["count"]))
  # It starts near the mean shape (every map flat: the image centre), so it falls less than the
  # regression head's loss, which starts far off.
  assert np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0]
  assert all(b < a for a, b in zip(losses, losses[1:]))


def test_config_check_refuses_a_bad_head():
  config = _heatmap_config()
  config_lib.check_config(config, num_devices=1)
  config.model.head = "mixture"
  with pytest.raises(errors.ConfigError, match="model.head must be one of"):
    config_lib.check_config(config, num_devices=1)
  config = _heatmap_config(output_activation="relu")
  with pytest.raises(errors.ConfigError, match="model.output_activation applies to the regression"):
    config_lib.check_config(config, num_devices=1)


def test_two_stage_heatmaps_add_the_finer_stage_and_are_checked():
  config = _heatmap_config(heatmap_stages=2)
  model = models.create_model(config)
  images, coords = synthetic.generate(2, seed=6)
  faces = faces_lib.from_arrays(images, coords)
  variables = init_jitted(model, faces.images, train=False)
  maps = variables["params"]["heatmap"]
  stage1_channels = config.model.stage_filters[0][-1]
  assert maps["finer_maps1"]["kernel"].shape == (stage1_channels, K.num_keypoints)

  def shapes(config):  # Traced, never compiled.
    model = models.create_model(config)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), faces.images, train=False))

  assert "finer_maps1" not in shapes(_heatmap_config())["params"]["heatmap"]  # tiny: last only.

  grads = _gradients(model, variables, faces)
  assert float(jnp.abs(grads["heatmap"]["finer_maps1"]["kernel"]).max()) > 0  # It is used.
  stem = shapes(_heatmap_config(heatmap_stages=3))["params"]["heatmap"]  # tiny: 2 stages.
  assert stem["finer_maps2"]["kernel"].shape == (config.model.stem_filters,
                                                 K.num_keypoints)  # The stem's map.
  for stages, ok in ((1, True), (2, True), (3, True), (0, False), (4, False)):
    problems = config_lib.problems(_heatmap_config(heatmap_stages=stages))
    assert (not problems) == ok, (stages, problems)


def test_confidence_is_the_maps_mass_near_its_soft_argmax():
  size, k = 48, 2
  centres = np.asarray(heads.cell_centres(size))
  peaked = np.full((1, size, size, k), -50.0, np.float32)
  peaked[0, 20, 30, 0] = 50.0  # All the mass on one cell: sure.
  peaked[0, 5, 5, 1] = peaked[0, 40, 40, 1] = 50.0  # Two far peaks: the mean lies between.
  got = np.asarray(heads.confidence(jnp.asarray(peaked)))
  assert got[0, 0] == pytest.approx(1.0, abs=1e-5) and got[0, 1] == pytest.approx(0.0, abs=1e-5)
  # A flat map: the share of the cells whose centres lie within the radius of the frame's
  # centre (where its soft-argmax is).
  flat = np.zeros((1, size, size, 1), np.float32)
  mid = (centres[0] + centres[-1]) / 2
  for radius in (4.0, 8.0, 20.0):
    inside = ((centres[None] - mid) ** 2 + (centres[:, None] - mid) ** 2) <= radius ** 2
    assert float(heads.confidence(jnp.asarray(flat), radius=radius)[0, 0]) == pytest.approx(
        inside.mean(), rel=1e-5)
  # With a margin, the cells beyond the frame count too.
  wide = np.zeros((1, size + 8, size + 8, 1), np.float32)
  assert float(heads.confidence(jnp.asarray(wide), margin=8.0, radius=200.0)[0, 0]) == (
      pytest.approx(1.0))
