"""The seed's deep residual network and recipe, without the seed's faults.

Run from the repository root:

  python -m facekp_jax.main --config=configs/resnet.py
  python -m facekp_jax.main --config=configs/resnet.py \
      --config.data.train_csv=training.csv

Differences from the seed notebook (see configs/seed_keras.py for the replica):
the horizontal flip swaps left/right labels; the train/validation split is made
before augmenting; the output layer is linear; augmentation is online (a fresh
draw per batch) instead of fixed copies; vertical flips are off (faces are
upright). Learning rate: Adam 1e-4 (measured with unit-scaled regression targets
on the built-in faces, 2140, seed 0, full 50 epochs, batch 32: validation RMSE
2.38 px with 1e-4 against 2.78 px with 1e-3, mean-shape baseline 4.26 px). The
regression head now predicts raw pixels, as Keras did (model.output_scale=1,
output_offset=0): experiments/parity.py found unit-scaled targets (x * 48 + 48)
to be the difference that made the port generalise worse than the notebook
(held-out MTFL, 48,960 images, seed 0: 3.01 px raw vs 4.02 px scaled; Keras 3.60).

Head: heatmaps with soft-argmax, not the seed's dense regression layers, since the
`head` ablation (experiments/README.md): -0.84 px on the built-in faces and -1.05 px
on real (MTFL) faces with the small model, every seed. Its maps read the last two
stages (11x11 and 5x5, study `stages`/`defaults`: 1.989 px against 2.079 px from the
last stage alone on held-out MTFL faces, full model, 25 epochs of 6120 faces, seed 0). The seed's network is
one override away: --config.model.head=regression (18,007,710 parameters;
experiments/benchmark.py times it by default, to compare with Keras and PyTorch).

For faces from other sources (more roll, other framings), since the `geometry` study
(experiments/README.md, MTFL, held-out faces no arm trained on): one affine warp per
face with probability 0.75 (rotation in +-30 degrees, scale 0.8-1.2, shift up to 8 px).
Without it the held-out error grows 41 % at +-20 degrees of roll and doubles at +-30;
with it, 9 % and 29 %. A parameter EMA (0.999) is what validation, checkpoints,
evaluate and predict use, and test-time augmentation (tta) is on: each face, its mirror,
and both turned by -10 and +10 degrees (tta_rotations), the keypoints mapped back and
averaged (held-out MTFL, full model, 25 epochs of 6120 faces: 1.905 px over seeds 0 and 1
against 2.001 with flips only, the same runs re-scored; the defaults before these studies,
no warp, EMA or TTA and the last stage's maps only: 2.275 px, and x2.5 under +-30 degrees of
roll where these grow x1.36). configs/tiny.py and configs/seed_keras.py switch all three off.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_epochs = 50
  config.batch_size = 32
  config.eval_batch_size = 128
  config.learning_rate = 1e-4  # The peak rate of any schedule.
  config.optimizer = "adam"  # "adam" or "adamw" (decoupled decay of kernels only).
  config.adam_eps = 1e-8  # optax's default; Keras' Adam uses 1e-7.
  config.weight_decay = 1e-4  # AdamW only; optax scales it by the learning rate.
  config.schedule = "constant"  # "constant", "cosine" or "onecycle" (facekp_jax/optim.py).
  config.warmup_epochs = 0.0  # Linear warm-up; onecycle: its rise (0: 30 % of the run).
  config.half_precision = False  # bfloat16 compute (accelerators; 2.5x slower on this CPU).
  # Keep the training split on the devices and gather + augment batches there (same batches
  # as the host pipeline), running steps_per_call steps per compiled call (lax.scan).
  config.input_on_device = False
  config.steps_per_call = 1
  config.checkpoint_every_steps = 0  # 0: at the end of every epoch only.
  config.keep_checkpoints = 2  # The last two, plus the best by validation RMSE.
  config.tta = True  # Evaluation (final, evaluate, predict) averages a face's and its mirror's.
  # With tta, also the face turned by -a and +a degrees for each angle a, keypoints turned
  # back (augment.tta_average): each angle costs four more passes of the model. +-10 degrees:
  # held-out MTFL 1.892 / 1.917 px against 1.989 / 2.013 with flips only (seeds 0 / 1, the
  # same runs); built-in faces 1.256 against 1.386 px (500 unseen faces).
  config.tta_rotations = (10.0,)
  # The training loss on pixel coordinates (facekp_jax/losses.py): "mse", "l1", "smooth_l1"
  # or "wing"; reported figures are in pixels whichever it is.
  config.loss = "mse"
  config.smooth_l1_beta = 1.0  # px: quadratic below, linear above.
  config.wing_w = 10.0  # px: the log region's width.
  config.wing_epsilon = 2.0  # px: the log region's curvature.
  # Parameter EMA (0: off). Validation, the best checkpoint, evaluate and predict use it.
  config.ema_decay = 0.999

  config.data = ml_collections.ConfigDict()
  config.data.train_csv = ""  # Empty: the built-in synthetic faces.
  # "all" (every row, missing values masked out of the loss) or "complete" (all 30 values, the
  # seed's choice). All won the `rows` ablation; on the built-in faces (no gaps) they agree.
  config.data.rows = "all"
  config.data.val_fraction = 0.2  # 0: a final fit on every face (the last checkpoint is the model).
  # A coordinate more than 48 px outside the image: "error", "mask" (it becomes missing) or
  # "drop" (its row goes). Nearer ones are real labels of faces in strong poses, and kept.
  config.data.bad_labels = "error"
  config.data.seed_copies = False  # The seed's offline copies (training split only).
  config.data.flip_copies = False  # Mirrored copies (with label swap) added once, as Keras did.
  config.data.synthetic_n = 2140  # As many faces as Kaggle's complete rows.
  config.data.synthetic_seed = 0
  config.data.synthetic_missing = False  # Kaggle's missing-label pattern.

  config.augment = ml_collections.ConfigDict()
  config.augment.hflip_prob = 0.5
  config.augment.hflip_swap = True  # False reproduces the seed's fault.
  config.augment.vflip_prob = 0.0
  config.augment.brightness_prob = 0.5
  config.augment.brightness_range = (0.8, 1.25)
  # One affine warp per face (facekp_jax/augment.py): rotation in [-rotate_deg, rotate_deg]
  # and a scale in scale_range about the frame centre, then a shift of up to shift_px per axis.
  config.augment.geometry_prob = 0.75
  config.augment.rotate_deg = 30.0
  config.augment.scale_range = (0.8, 1.2)
  config.augment.shift_px = 8.0

  config.model = ml_collections.ConfigDict()
  config.model.stage_filters = ((64, 64, 256), (128, 128, 512))
  config.model.stage_blocks = (3, 3)
  config.model.stem_filters = 64
  config.model.dense_sizes = (4096, 2048)
  config.model.dropout_rates = (0.2, 0.1)
  # "heatmap" (maps + soft-argmax, facekp_jax/heads.py) or "regression" (the seed's dense layers).
  config.model.head = "heatmap"
  config.model.heatmap_size = 48  # Heatmap head: cells of its maps across the frame (2 px).
  # Heatmap head: pixels its maps reach beyond the frame on each side (whole cells), so that
  # labels off the 96x96 crop train and can be predicted.
  config.model.heatmap_margin = 0.0
  # Heatmap head: how many of the last stages feed its maps: the 5x5 and the 11x11 stage
  # (study defaults, held-out MTFL, full model: 1.989 px vs 2.079 px with the last only).
  config.model.heatmap_stages = 2
  config.model.output_activation = "linear"  # Regression head only.
  # Regression head: the last layer's output maps to pixels by y * scale + offset. Raw pixels
  # (1, 0), as the Keras notebook, since experiments/parity.py: 3.01 px held-out vs 4.02 px with
  # unit-scaled targets (48, 48), the largest of the Keras differences (the heatmap head
  # ignores both).
  config.model.output_scale = 1.0
  config.model.output_offset = 0.0
  config.model.conv_bias = True
  config.model.kernel_init = "lecun_normal"  # Or "glorot_uniform" (Keras', the seed's).
  config.model.fast_ops = True  # Same function and parameters, faster on CPU.
  return config
