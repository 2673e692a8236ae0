"""experiments/op_profile.py: which layer and pass each op of a compiled step or a TensorFlow
profile belongs to, and the table."""

import collections

import jax
import numpy as np

from configs import resnet
from experiments import op_profile
from facekp_jax.core import sharding
from facekp_jax.training import steps


def _tiny_seed_step():
  """The compiled text and parameters of a small seed-network train step (regression head)."""
  config = resnet.get_config()
  config.model.head, config.batch_size = "regression", 4
  config.model.stage_filters, config.model.stage_blocks = ((4, 4, 8),), (1,)
  config.model.stem_filters, config.model.dense_sizes = 4, (8,)
  config.model.dropout_rates = (0.1,)
  mesh = sharding.make_mesh()
  trainer = steps.Trainer(config, mesh)
  state = trainer.init_state()
  batch = {"images": np.zeros((4, 96, 96, 1), np.float32),
           "targets": np.full((4, 30), 48.0, np.float32), "mask": np.ones((4, 30), np.float32)}
  text = trainer.train_step.lower(state, sharding.to_global(batch, mesh)).compile().as_text()
  return text, jax.device_get(state.params)


def test_every_layer_class_and_the_update_are_found_in_a_compiled_step():
  text, params = _tiny_seed_step()
  names = op_profile.instruction_ops(text)
  kinds = op_profile.module_kinds(params)
  assert kinds["stem_conv"] == "stem conv 7x7"
  assert kinds["stage1_block1/conv2"] == "conv 3x3"
  assert kinds["stage1_block1/conv1"] == "conv 1x1"
  assert kinds["stage1_block1/norm1"] == "batch norm"
  assert kinds["dense1"] == kinds["output"] == "dense"
  classes = collections.Counter(op_profile.jax_class(op, kinds) for op in names.values())
  for kind in ("stem conv 7x7", "conv 1x1", "conv 3x3", "batch norm", "dense"):
    assert classes[(kind, "forward")] and classes[(kind, "backward")], kind
  # The optimizer's update carries its named scope (training/steps.py), so it is not "other".
  assert classes[("optimizer (Adam)", "update")] > 0
  assert set(c for c, _ in classes) <= set(op_profile.CLASSES)


def test_instruction_names_and_their_op_names_are_read_from_hlo_text():
  text = ('ENTRY %main {\n'
          '  %ynn_fusion.7 = f32[8,4]{1,0} fusion(%a, %b), kind=kCustom, calls=%f, '
          'metadata={op_name="jit(train_step)/jvp(ResNet)/dense1/dot_general" '
          'stack_frame_id=3}\n'
          '  ROOT %tuple.1 = (f32[]) tuple(%c)\n'
          '  %copy.2 = f32[4] copy(%d), metadata={op_name="jit(train_step)/optimizer/add"}\n}')
  assert op_profile.instruction_ops(text) == {
      "ynn_fusion.7": "jit(train_step)/jvp(ResNet)/dense1/dot_general",
      "copy.2": "jit(train_step)/optimizer/add"}


def test_keras_kernels_are_classed_by_their_named_layer():
  name = "StatefulPartitionedCall/gradient_tape/functional_1/{}/x:_MklOp"
  assert op_profile.keras_class(name.format("L02_Conv2D_7x7")) == ("stem conv 7x7", "backward")
  assert op_profile.keras_class(name.format("L13_Conv2D_1x1_1")) == ("conv 1x1", "backward")
  assert op_profile.keras_class(
      "StatefulPartitionedCall/functional_1/L09_Conv2D_3x3/BiasAdd:_MklNativeFusedConv2D") == (
          "conv 3x3", "forward")
  assert op_profile.keras_class(name.format("L03_BatchNormalization"))[0] == "batch norm"
  assert op_profile.keras_class(name.format("L78_Dense_1"))[0] == "dense"
  assert op_profile.keras_class(name.format("L05_MaxPooling2D"))[0] == "pooling"
  assert op_profile.keras_class(name.format("L04_Activation"))[0] == "relu, add, dropout"
  assert op_profile.keras_class("StatefulPartitionedCall/adam/Mul_339:Mul") == (
      "optimizer (Adam)", "update")
  assert op_profile.keras_class("StatefulPartitionedCall/compile_loss/mse/Sub:Sub")[0] == (
      "loss and other")


def test_the_table_gives_each_class_per_step_and_the_ratio():
  jax_ops = [{"name": "ynn_fusion.1", "op_name": "jit(train_step)/jvp(ResNet)/dense1/dot",
              "us": 20000.0, "calls": 2, "class": "dense", "pass": "forward"},
             {"name": "add.3", "op_name": "jit(train_step)/optimizer/add", "us": 6000.0,
              "calls": 2, "class": "optimizer (Adam)", "pass": "update"}]
  keras_ops = [{"name": "StatefulPartitionedCall/functional_1/L78_Dense/MatMul:_MklMatMul",
                "type": "_MklMatMul", "us": 40000.0, "calls": 2, "class": "dense",
                "pass": "forward"}]
  text = op_profile.table({"jax": {"steps": 2, "step_ms": 15.0, "ops": jax_ops},
                           "keras": {"steps": 2, "step_ms": 30.0, "ops": keras_ops}}, 32)
  rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()}
  assert rows["dense"] == "| dense | 10.0 | 20.0 | 0.50 |"
  assert rows["optimizer (Adam)"] == "| optimizer (Adam) | 3.0 | 0.0 | — |"
  assert rows["**step wall (unprofiled median)**"].endswith("| 15.0 | 30.0 | 0.50 |")
  assert "`ynn_fusion.1` jvp(ResNet)/dense1/dot" in text
  assert "`_MklMatMul` functional_1/L78_Dense/MatMul" in text
