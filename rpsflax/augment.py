"""Keras ImageDataGenerator augmentation in pure JAX, run on device inside the train step.

Same meaning as `keras.src.legacy.preprocessing.image` (Keras 3.15): parameters are sampled as
`ImageDataGenerator.get_random_transform` samples them, and applied as `apply_transform`
(`apply_affine_transform` with scipy order=1, then flips). Batched: one transform per image.

Keras quirks kept on purpose, so a recipe means here what it meant in the tutorial:
- `shear_range` is in DEGREES (the Keras docstring says "angle in degrees"), so the cats-vs-dogs
  tutorial's `shear_range=0.2` shears by at most 0.2 degrees: almost nothing.
- `tx` is sampled from `height_shift_range` (fractions scale by the height) and `ty` from
  `width_shift_range`, but `apply_affine_transform` adds `tx` to the COLUMN coordinate and `ty` to
  the ROW coordinate. So Keras' height shift moves images sideways and vice versa. Invisible for
  the recipes (equal ranges, square images), kept so parameters compare one to one with Keras.
- The rotation/zoom centre is (h/2 - 0.5) on the column axis and (w/2 - 0.5) on the row axis
  (Keras passes (h, w) to `transform_matrix_offset_center` before swapping x and y). Exact on
  square images; kept as is on non-square ones.
- Shift ranges: a value < 1 is a fraction of the size, sampled uniformly. An INTEGRAL value >= 1
  (10 or 10.0) is taken as Keras' int: `np.random.choice(n) * random sign`, i.e. whole pixels
  in -(n-1)..(n-1) with 0 twice as likely. The tutorial wrote `width_shift_range=10` (an int);
  our config stores 10.0 (config fields are floats), so integral floats follow the int rule.
  A non-integral value >= 1 (12.5) is Keras' float rule: uniform pixels in [-12.5, 12.5].
  A tuple/list picks one of its values times a random sign, as Keras does.
- scipy's `wrap` mode wraps with period n-1 (first and last samples overlap), not n; we copy that.

The resampling is written here rather than taken from DeepMind's dm-pix (`pix.affine_transform`)
or `jax.scipy.ndimage.map_coordinates` because neither wraps as scipy (so Keras) does, and
map_coordinates' 'constant' mode differs too; the comparison is in docs/augment.md. The Keras
parity tests in tests/test_augment.py hold this module to scipy's meaning in every mode.
"""

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

FILL_MODES = ("nearest", "constant", "reflect", "wrap")
PARAM_KEYS = ("theta", "tx", "ty", "shear", "zx", "zy", "flip_horizontal", "flip_vertical")
_IDENTITY = {"theta": 0.0, "tx": 0.0, "ty": 0.0, "shear": 0.0, "zx": 1.0, "zy": 1.0}


def zoom_bounds(zoom_range) -> tuple[float, float]:
  """ImageDataGenerator.__init__: a number z -> [1 - z, 1 + z]; a pair is taken as is."""
  if isinstance(zoom_range, (int, float, np.number)):
    return 1.0 - float(zoom_range), 1.0 + float(zoom_range)
  lo, hi = zoom_range
  return float(lo), float(hi)


def _sample_shift(rng, batch_size: int, shift_range, size: int):
  """One of get_random_transform's shift branches (tx or ty), in pixels."""
  if isinstance(shift_range, (tuple, list)):
    values = np.asarray(shift_range, np.float32)
    if values.size == 0 or not np.any(values):
      return jnp.zeros((batch_size,), jnp.float32)
    k_pick, k_sign = jax.random.split(rng)
    pick = jnp.asarray(values)[jax.random.randint(k_pick, (batch_size,), 0, values.size)]
    shift = pick * _random_sign(k_sign, batch_size)
    return shift * size if values.max() < 1 else shift
  r = float(shift_range)
  if r == 0:
    return jnp.zeros((batch_size,), jnp.float32)
  if r >= 1 and r.is_integer():
    # Keras' int branch: np.random.choice(r) * np.random.choice([-1, 1]).
    k_pick, k_sign = jax.random.split(rng)
    pick = jax.random.randint(k_pick, (batch_size,), 0, int(r)).astype(jnp.float32)
    return pick * _random_sign(k_sign, batch_size)
  shift = jax.random.uniform(rng, (batch_size,), jnp.float32, -r, r)
  return shift * size if r < 1 else shift


def _random_sign(rng, batch_size: int):
  return jnp.where(jax.random.bernoulli(rng, 0.5, (batch_size,)), 1.0, -1.0).astype(jnp.float32)


def _uniform_or(rng, batch_size: int, lo: float, hi: float, constant: float):
  if lo == hi == constant:
    return jnp.full((batch_size,), constant, jnp.float32)
  return jax.random.uniform(rng, (batch_size,), jnp.float32, lo, hi)


def sample_transforms(rng, batch_size: int, image_hw: tuple[int, int], aug) -> dict:
  """Random parameters for `batch_size` images, distributed as get_random_transform's.

  Returns Keras' keys, each a [batch_size] array: theta and shear in degrees, tx/ty in pixels
  (see the module docstring for which axis each moves), zx/zy zoom factors (>1 shrinks the
  content), flip_horizontal/flip_vertical bools.
  """
  h, w = image_hw
  keys = jax.random.split(rng, 7)
  rot = float(aug.rotation_range)
  shear = float(aug.shear_range)
  z_lo, z_hi = zoom_bounds(aug.zoom_range)
  if z_lo == 1 and z_hi == 1:
    zx = zy = jnp.ones((batch_size,), jnp.float32)
  else:  # np.random.uniform(lo, hi, 2): zx and zy drawn independently.
    zx = jax.random.uniform(keys[3], (batch_size,), jnp.float32, z_lo, z_hi)
    zy = jax.random.uniform(keys[4], (batch_size,), jnp.float32, z_lo, z_hi)
  hflip = bool(aug.horizontal_flip)
  vflip = bool(aug.vertical_flip)
  no_flip = jnp.zeros((batch_size,), bool)
  return {
      "theta": _uniform_or(keys[0], batch_size, -rot, rot, 0.0),
      "tx": _sample_shift(keys[1], batch_size, aug.height_shift_range, h),
      "ty": _sample_shift(keys[2], batch_size, aug.width_shift_range, w),
      "shear": _uniform_or(keys[5], batch_size, -shear, shear, 0.0),  # degrees (Keras' unit)
      "zx": zx,
      "zy": zy,
      "flip_horizontal": jax.random.bernoulli(keys[6], 0.5, (batch_size,)) if hflip else no_flip,
      "flip_vertical": (jax.random.bernoulli(jax.random.fold_in(keys[6], 1), 0.5, (batch_size,))
                        if vflip else no_flip),
  }


def affine_matrices(params: Mapping[str, Any], batch_size: int):
  """Keras' rotation @ shift @ shear @ zoom as [B, 2, 2] linear parts and [B, 2] shifts.

  In Keras' (x, y) frame; after Keras' axis swap x is the column and y the row coordinate.
  """
  def get(k):
    return jnp.broadcast_to(jnp.asarray(params.get(k, _IDENTITY[k]), jnp.float32), (batch_size,))
  theta, shear = jnp.deg2rad(get("theta")), jnp.deg2rad(get("shear"))
  tx, ty, zx, zy = get("tx"), get("ty"), get("zx"), get("zy")
  c, s = jnp.cos(theta), jnp.sin(theta)
  rot = jnp.stack([jnp.stack([c, -s], -1), jnp.stack([s, c], -1)], -2)
  shear_zoom = jnp.stack([jnp.stack([zx, -jnp.sin(shear) * zy], -1),
                          jnp.stack([jnp.zeros_like(zx), jnp.cos(shear) * zy], -1)], -2)
  linear = rot @ shear_zoom
  shift = (rot @ jnp.stack([tx, ty], -1)[..., None])[..., 0]  # rotation @ shift matrix
  return linear, shift


def _source_coords(params, batch_size: int, h: int, w: int, hflip=None, vflip=None):
  """Input (row, col) sampled by each output pixel, as scipy.ndimage.affine_transform computes it.

  The matrix maps output to input as offset_center(M) = M(p - o) + o, with p = (col, row) after
  Keras' swap and o = (h/2 - 0.5, w/2 - 0.5). Writing it centred keeps float32 error ~1e-5 px.
  Flips after the affine are folded in by reading the affine at the mirrored output pixel.
  """
  linear, shift = affine_matrices(params, batch_size)
  ox, oy = h / 2.0 - 0.5, w / 2.0 - 0.5
  cols = jnp.arange(w, dtype=jnp.float32)
  rows = jnp.arange(h, dtype=jnp.float32)
  u = jnp.broadcast_to(cols - ox, (batch_size, w))   # [B, W] centred output column
  v = jnp.broadcast_to(rows - oy, (batch_size, h))   # [B, H] centred output row
  if hflip is not None:
    u = jnp.where(hflip[:, None], (w - 1 - cols) - ox, u)
  if vflip is not None:
    v = jnp.where(vflip[:, None], (h - 1 - rows) - oy, v)
  u, v = u[:, None, :], v[:, :, None]                # broadcast to [B, H, W]
  a = linear[:, :, :, None, None]
  t = shift[:, :, None, None]
  col_in = a[:, 0, 0] * u + a[:, 0, 1] * v + (t[:, 0] + ox)
  row_in = a[:, 1, 0] * u + a[:, 1, 1] * v + (t[:, 1] + oy)
  return row_in, col_in


def _axis_taps(coord, n: int, mode: str):
  """Two neighbour indices, the weight of the second, and (constant mode) validity, per scipy."""
  if mode == "reflect":  # half-sample symmetric: ... b a | a b c d | d c ...
    i0 = jnp.floor(coord)
    w1 = coord - i0
    i0 = i0.astype(jnp.int32)
    def fold(k):
      m = jnp.mod(k, 2 * n)
      return jnp.where(m >= n, 2 * n - 1 - m, m)
    return fold(i0), fold(i0 + 1), w1, None
  valid = None
  if mode == "constant":  # scipy: any coordinate outside [0, n-1] gives cval, no blending.
    valid = (coord >= 0) & (coord <= n - 1)
  elif mode == "wrap" and n > 1:  # scipy's 'wrap': period n-1, as its map_coordinate() does.
    sz = float(n - 1)
    coord = jnp.where(coord < 0, coord + sz * (jnp.trunc(-coord / sz) + 1),
                      jnp.where(coord > sz, coord - sz * jnp.trunc(coord / sz), coord))
  coord = jnp.clip(coord, 0.0, n - 1.0)  # 'nearest' is exactly this clamp
  i0 = jnp.floor(coord)
  w1 = coord - i0
  i0 = i0.astype(jnp.int32)
  return i0, jnp.minimum(i0 + 1, n - 1), w1, valid


def _resample(images, row_in, col_in, fill_mode: str, cval: float):
  """Bilinear (scipy order=1) sampling of [B, H, W, C] float images at [B, H, W] coordinates."""
  b, h, w, ch = images.shape
  r0, r1, wr, vr = _axis_taps(row_in, h, fill_mode)
  c0, c1, wc, vc = _axis_taps(col_in, w, fill_mode)
  flat = images.reshape(b, h * w, ch)

  def tap(ri, ci):
    idx = (ri * w + ci).reshape(b, h * w, 1)
    return jnp.take_along_axis(flat, idx, axis=1, mode="promise_in_bounds").reshape(b, h, w, ch)

  wr, wc = wr[..., None], wc[..., None]
  out = ((1 - wr) * ((1 - wc) * tap(r0, c0) + wc * tap(r0, c1))
         + wr * ((1 - wc) * tap(r1, c0) + wc * tap(r1, c1)))
  if vr is not None:
    out = jnp.where((vr & vc)[..., None], out, jnp.float32(cval))
  return out


def _check_fill_mode(fill_mode: str):
  if fill_mode not in FILL_MODES:
    raise ValueError(f"config.augment.fill_mode={fill_mode!r}: use one of {FILL_MODES}")


def apply_affine(images, params: Mapping[str, Any], fill_mode: str = "nearest", cval: float = 0.0):
  """Keras apply_affine_transform (order=1) on each image of a [B, H, W, C] batch -> float32.

  `params` holds [B] (or scalar) theta, tx, ty, shear, zx, zy in Keras' units; missing keys
  mean identity. Flips are not applied here (see `apply_transform`).
  """
  _check_fill_mode(fill_mode)
  images = jnp.asarray(images, jnp.float32)
  b, h, w, _ = images.shape
  row_in, col_in = _source_coords(params, b, h, w)
  return _resample(images, row_in, col_in, fill_mode, cval)


def apply_flips(images, params: Mapping[str, Any]):
  """Flip images whose flip_horizontal / flip_vertical is set (after the affine, as Keras)."""
  x = jnp.asarray(images)
  for key, axis in (("flip_horizontal", 2), ("flip_vertical", 1)):
    if key in params:
      flag = jnp.broadcast_to(jnp.asarray(params[key], bool), x.shape[:1])
      x = jnp.where(flag[:, None, None, None], jnp.flip(x, axis), x)
  return x


def apply_transform(images, params: Mapping[str, Any], fill_mode: str = "nearest",
                    cval: float = 0.0, affine: bool = True):
  """ImageDataGenerator.apply_transform for a batch: affine, then flips; float32 out.

  With affine=True the flips are folded into the resampling (the same arithmetic per output
  pixel as flipping afterwards, at no extra cost); affine=False applies the flips alone.
  """
  _check_fill_mode(fill_mode)
  images = jnp.asarray(images, jnp.float32)
  if not affine:
    return apply_flips(images, params)
  b, h, w, _ = images.shape
  flag = lambda k: (jnp.broadcast_to(jnp.asarray(params[k], bool), (b,)) if k in params else None)
  row_in, col_in = _source_coords(params, b, h, w, flag("flip_horizontal"), flag("flip_vertical"))
  return _resample(images, row_in, col_in, fill_mode, cval)


def needs_affine(aug) -> bool:
  """Whether the config samples any non-identity affine (a Python bool at trace time)."""
  shifts = [aug.width_shift_range, aug.height_shift_range]
  return bool(float(aug.rotation_range) or float(aug.shear_range)
              or zoom_bounds(aug.zoom_range) != (1.0, 1.0)
              or any(np.any(np.asarray(s, np.float64)) for s in shifts))


def augment_batch(rng, images, aug) -> jax.Array:
  """Random ImageDataGenerator-style augmentation of a uint8/float [B, H, W, C] batch (0..255).

  `aug` is config.augment; its fields are read as Python constants at trace time. Returns
  float32. Disabled, or nothing to do: just the float32 cast.
  """
  images = jnp.asarray(images)
  if not aug.enabled:
    return images.astype(jnp.float32)
  fill_mode = str(aug.fill_mode)
  _check_fill_mode(fill_mode)
  affine = needs_affine(aug)
  flips = bool(aug.horizontal_flip) or bool(aug.vertical_flip)
  if not affine and not flips:
    return images.astype(jnp.float32)
  b, h, w = images.shape[:3]
  params = sample_transforms(rng, b, (h, w), aug)
  return apply_transform(images, params, fill_mode, float(aug.cval), affine=affine)
