"""Keypoint layouts as data: each layout's point names, mirror twins, NME normaliser and drawing.

A ``Layout`` is what every other module asks about keypoints: how many there are, their CSV
columns, which point a mirrored face's point becomes, which pair of points normalises the NME,
and which points a plot joins with lines. Five are built in (``LAYOUTS``):

  * ``kaggle15``: Kaggle's Facial Keypoints Detection set (eye centres and corners, eyebrow
    ends, nose tip, mouth corners and lips), the default and the Kaggle CSV's.
  * ``mtfl5``: MTFL's and AFLW's 5 points (eye centres, nose tip, mouth corners), named as
    Kaggle names them, so a Kaggle CSV holding only these five reads as this layout.
  * ``300w68``: the 68 points of 300W / iBUG / AFW (jaw 0-16, brows 17-26, nose 27-35,
    eyes 36-47, mouth 48-67; the subject's right side first).
  * ``wflw98``: WFLW's 98 (contour 0-32, brows 33-50, nose 51-59, eyes 60-75, mouth 76-95,
    pupils 96-97).
  * ``cofw29``: COFW's 29 (brows 0-7, eyes 8-17, nose 18-21, mouth 22-27, chin 28).

The dense layouts name each point by its region and its index as the set counts it
(``right_eye_36``, ``contour_16``), so a name means one point in every layout that has it:
MTFL's five are Kaggle's, and no other two layouts share a name.

The mirror twins are the data sets' own (mmpose's ``swap`` pairs); ``layout`` checks that
flipping twice is the identity. A name is looked up with ``get``; "" is the default layout.

Conventions:
  * "left" is the *subject's* left, which appears on the image's right side
    (larger x), as in Kaggle's Facial Keypoints Detection data.
  * Coordinates are in pixels of a 96x96 image, x to the right, y down, with
    pixel ``(row=i, col=j)`` centred at ``(x=j, y=i)``. A horizontal mirror of
    the image therefore maps ``x -> 95 - x`` (``IMAGE_SIZE - 1 - x``; ``geometry.mirror``).
  * The 2K target columns interleave x and y: ``[k0_x, k0_y, k1_x, k1_y, ...]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

IMAGE_SIZE = 96
# Kaggle's framing: eye centres ~36.2 px apart, their midpoint at ~(48.3, 37.8) of the frame
# (../shared/data/README.md); the .pts reader and the photo crops place faces so.
EYE_DISTANCE = 36.2
EYE_MIDPOINT = (48.3, 37.8)
IMAGE_COLUMN = "Image"
ID_COLUMN = "ImageId"


@dataclasses.dataclass(frozen=True)
class Layout:
  """One keypoint layout.

  Attributes:
    name: the layout's name (``config.data.keypoints``).
    names: the keypoints' names, in output order.
    flip: ``flip[i]`` is the keypoint that keypoint ``i`` becomes in a mirrored face.
    normalisers: the NME's normalising pairs by preference, ``(name, (i, j))``: the outer eye
      corners ("inter_ocular") where the layout has them, then the eye centres ("inter_pupil").
    lines: index runs a plot joins with lines (a run that ends where it starts is closed).
  """

  name: str
  names: tuple[str, ...]
  flip: tuple[int, ...]
  normalisers: tuple[tuple[str, tuple[int, int]], ...]
  lines: tuple[tuple[int, ...], ...] = ()

  @property
  def num_keypoints(self) -> int:
    return len(self.names)

  @property
  def num_coords(self) -> int:
    return 2 * len(self.names)

  @property
  def columns(self) -> tuple[str, ...]:
    """The 2K coordinate columns of a CSV of this layout: ``{name}_x, {name}_y, ...``."""
    return tuple(f"{name}_{axis}" for name in self.names for axis in ("x", "y"))

  @property
  def flip_coords(self) -> np.ndarray:
    """``flip`` over the 2K interleaved coordinates."""
    k = np.asarray(self.flip)
    return np.stack([2 * k, 2 * k + 1], axis=1).reshape(-1)

  def index(self, name: str) -> int:
    return self.names.index(name)

  def __repr__(self) -> str:
    return f"Layout({self.name!r}, {self.num_keypoints} keypoints)"

  def describe(self) -> str:
    return f"{self.name} ({self.num_keypoints} keypoints)"


def layout(name: str, names: Sequence[str], pairs: Sequence[tuple[int, int]],
           normalisers: Sequence[tuple[str, tuple[int, int]]],
           lines: Sequence[Sequence[int]] = ()) -> Layout:
  """A ``Layout`` from its mirror pairs (every point not in a pair is its own twin)."""
  flip = list(range(len(names)))
  for a, b in pairs:
    if flip[a] != a or flip[b] != b:
      raise ValueError(f"layout {name}: keypoint {a} or {b} is in two mirror pairs")
    flip[a], flip[b] = b, a
  if len(set(names)) != len(names):
    raise ValueError(f"layout {name}: keypoint names repeat")
  return Layout(name, tuple(names), tuple(flip), tuple((n, tuple(p)) for n, p in normalisers),
                tuple(tuple(run) for run in lines))


def _numbered(*regions: tuple[str, int]) -> list[str]:
  """Names ``{region}_{i}`` with ``i`` the point's index in the whole layout."""
  names = []
  for region, n in regions:
    names += [f"{region}_{len(names) + j}" for j in range(n)]
  return names


def _mirror_name(name: str) -> str:
  for a, b in (("left_", "right_"), ("right_", "left_"), ("mouth_left_", "mouth_right_"),
               ("mouth_right_", "mouth_left_")):
    if name.startswith(a):
      return b + name[len(a):]
  return name


def _named(name: str, names: Sequence[str], **kwargs) -> Layout:
  """A layout whose mirror twins follow from the names (left_ <-> right_)."""
  pairs = {tuple(sorted((i, names.index(_mirror_name(n))))) for i, n in enumerate(names)}
  return layout(name, names, sorted(p for p in pairs if p[0] != p[1]), **kwargs)


_KAGGLE_NAMES = (
    "left_eye_center", "right_eye_center", "left_eye_inner_corner", "left_eye_outer_corner",
    "right_eye_inner_corner", "right_eye_outer_corner", "left_eyebrow_inner_end",
    "left_eyebrow_outer_end", "right_eyebrow_inner_end", "right_eyebrow_outer_end", "nose_tip",
    "mouth_left_corner", "mouth_right_corner", "mouth_center_top_lip", "mouth_center_bottom_lip")
KAGGLE = _named("kaggle15", _KAGGLE_NAMES,
                normalisers=(("inter_ocular", (3, 5)), ("inter_pupil", (0, 1))),
                lines=((7, 6), (8, 9), (5, 4), (2, 3), (11, 13, 12, 14, 11)))

MTFL = _named("mtfl5", ("left_eye_center", "right_eye_center", "nose_tip", "mouth_left_corner",
                        "mouth_right_corner"),
              normalisers=(("inter_pupil", (0, 1)),), lines=((3, 4),))

W300 = layout(
    "300w68",
    _numbered(("jaw", 17), ("right_brow", 5), ("left_brow", 5), ("nose_bridge", 4),
              ("nose_base", 5), ("right_eye", 6), ("left_eye", 6), ("outer_lip", 12),
              ("inner_lip", 8)),
    [(i, 16 - i) for i in range(8)] + [(17 + i, 26 - i) for i in range(5)]
    + [(31, 35), (32, 34)] + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
    + [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)],
    normalisers=(("inter_ocular", (36, 45)),),
    lines=(range(0, 17), range(17, 22), range(22, 27), range(27, 31), range(31, 36),
           (*range(36, 42), 36), (*range(42, 48), 42), (*range(48, 60), 48),
           (*range(60, 68), 60)))

WFLW = layout(
    "wflw98",
    _numbered(("contour", 33), ("right_brow", 9), ("left_brow", 9), ("nose_bridge", 4),
              ("nose_base", 5), ("right_eye", 8), ("left_eye", 8), ("outer_lip", 12),
              ("inner_lip", 8), ("right_pupil", 1), ("left_pupil", 1)),
    [(i, 32 - i) for i in range(16)] + [(33 + i, 46 - i) for i in range(5)]
    + [(38 + i, 50 - i) for i in range(4)] + [(55, 59), (56, 58)]
    + [(60 + i, 72 - i) for i in range(5)] + [(65, 75), (66, 74), (67, 73)]
    + [(76, 82), (77, 81), (78, 80), (83, 87), (84, 86), (88, 92), (89, 91), (93, 95), (96, 97)],
    normalisers=(("inter_ocular", (60, 72)),),
    lines=(range(0, 33), (*range(33, 42), 33), (*range(42, 51), 42), range(51, 55),
           range(55, 60), (*range(60, 68), 60), (*range(68, 76), 68), (*range(76, 88), 76),
           (*range(88, 96), 88)))

COFW = layout(
    "cofw29",
    _numbered(("brow", 8), ("eye", 10), ("nose", 4), ("mouth", 6), ("chin", 1)),
    [(0, 1), (2, 3), (4, 6), (5, 7), (8, 9), (10, 11), (12, 14), (13, 15), (16, 17), (18, 19),
     (22, 23)],
    normalisers=(("inter_ocular", (8, 9)),))

LAYOUTS: dict[str, Layout] = {k.name: k for k in (KAGGLE, MTFL, W300, WFLW, COFW)}
DEFAULT = KAGGLE


def get(name: str) -> Layout:
  """The built-in layout ``name`` ("": the default, Kaggle's 15)."""
  if not name:
    return DEFAULT
  if name not in LAYOUTS:
    raise KeyError(f"unknown keypoint layout {name!r} (built in: {', '.join(LAYOUTS)})")
  return LAYOUTS[name]


def problem(name) -> str | None:
  """What is wrong with a layout name (None: it names one, or is "" to infer it)."""
  if name == "" or name in LAYOUTS:
    return None
  return f"must be one of {', '.join(LAYOUTS)} (or '' to infer it from the data), got {name!r}"


def of_columns(columns: Sequence[str]) -> Layout | None:
  """The built-in layout whose coordinate columns are exactly ``columns`` (any order)."""
  wanted = set(columns)
  for k in LAYOUTS.values():
    if set(k.columns) == wanted:
      return k
  return None


def of_names(names: Sequence[str]) -> Layout:
  """The smallest built-in layout that holds every keypoint named in ``names``."""
  wanted = set(names)
  for k in sorted(LAYOUTS.values(), key=lambda k: k.num_keypoints):
    if wanted <= set(k.names):
      return k
  raise KeyError(f"no built-in layout holds the keypoints {sorted(wanted)}")
