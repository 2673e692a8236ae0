"""The faces container: from arrays (NaN = missing), joins, per-face choice, padding."""

import jax
import jax.numpy as jnp
import numpy as np

from facekp_jax.core import faces as faces_lib


def _faces(n, value=1.0):
  return faces_lib.Faces(np.full((n, 96, 96, 1), value, np.float32),
                         np.full((n, 30), value, np.float32), np.ones((n, 30), np.float32))


def test_from_arrays_masks_the_missing_coordinates():
  coords = np.full((2, 30), 40.0, np.float32)
  coords[1, 4:6] = np.nan
  faces = faces_lib.from_arrays(np.full((2, 96, 96), 255, np.uint8), coords)
  assert faces.images.shape == (2, 96, 96, 1) and faces.images.max() == 1.0
  assert faces.mask[1, 4:6].tolist() == [0, 0] and faces.targets[1, 4:6].tolist() == [0, 0]
  assert faces.mask.sum() == 58


def test_concat_and_where_keep_each_face_whole():
  both = faces_lib.concat([_faces(2, 1.0), _faces(3, 2.0)])
  assert len(both) == 5 and both.targets[:, 0].tolist() == [1, 1, 2, 2, 2]
  chosen = faces_lib.where(np.array([True, False]), _faces(2, 1.0), _faces(2, 2.0))
  assert chosen.images[:, 0, 0, 0].tolist() == [1, 2] and chosen.targets[:, 0].tolist() == [1, 2]


def test_faces_pass_through_jit_as_a_pytree():
  def first_then_reversed(f):
    return faces_lib.where(jnp.array([True, False]), f, f.take(slice(None, None, -1)), xp=jnp)

  out = jax.jit(first_then_reversed)(faces_lib.concat([_faces(1, 1.0), _faces(1, 3.0)]))
  assert isinstance(out, faces_lib.Faces) and np.asarray(out.targets[:, 0]).tolist() == [1, 1]


def test_pad_rows_appends_zero_rows_up_to_the_size_only():
  x = np.ones((5, 3), np.float32)
  padded = faces_lib.pad_rows(x, 8)
  assert padded.shape == (8, 3) and padded[:5].sum() == 15 and padded[5:].sum() == 0
  assert faces_lib.pad_rows(x, 4) is x and faces_lib.pad_rows(x, 5) is x


def test_put_replaces_the_rows_in_a_copy():
  faces, values = _faces(4, 1.0), _faces(2, 5.0)
  out = faces_lib.put(faces, np.array([1, 3]), values)
  assert out.targets[:, 0].tolist() == [1, 5, 1, 5]
  assert out.images[:, 0, 0, 0].tolist() == [1, 5, 1, 5]
  assert faces.targets[:, 0].tolist() == [1, 1, 1, 1]  # The input is left alone.
