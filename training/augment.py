"""Device-side augmentation and normalisation, run inside the train step.

Pure JAX functions of uint8 images, as a dataset's spec
(input_pipeline.DatasetSpec) gives them: for CIFAR a random 32x32 crop of
the 4-pixel zero-padded image and a random horizontal flip, then
per-channel normalisation, as torchvision's `RandomCrop(32, padding=4)`,
`RandomHorizontalFlip()` and `Normalize` in the Padam authors' code.
"""

import jax
import jax.numpy as jnp

from training import input_pipeline


def normalize(images_uint8: jax.Array,
              dataset: input_pipeline.DatasetSpec) -> jax.Array:
  """(x / 255 - mean) / std per channel of `dataset`, float32; channels last."""
  images = jnp.asarray(images_uint8)
  channels = len(dataset.mean)
  if images.shape[-1] != channels:
    raise ValueError(f'normalize expects channels last (..., {channels}), got '
                     f'shape {images.shape}.')
  mean = jnp.asarray(dataset.mean, jnp.float32)
  std = jnp.asarray(dataset.std, jnp.float32)
  return (images.astype(jnp.float32) / 255.0 - mean) / std


def augment(rng: jax.Array, images_uint8: jax.Array,
            dataset: input_pipeline.DatasetSpec) -> jax.Array:
  """Random crop of the zero-padded image + random horizontal flip, each as
  `dataset` has it (crop_padding 0: no crop; flip False: no flip).

  `rng` is a typed or raw PRNG key; `images_uint8` (N, H, W, C), padded with
  0 before normalisation; same shape and dtype out. Example i uses the i-th
  key of jax.random.split(rng, N), so the result depends only on `rng` and
  the batch, not on how it is sharded.
  """
  images = jnp.asarray(images_uint8)
  if images.ndim != 4:
    raise ValueError(f'augment expects a batch (N, H, W, C), got shape '
                     f'{images.shape}.')
  n, height, width, channels = images.shape
  pad = dataset.crop_padding
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  keys = jax.random.split(rng, n)

  def one(key, padded_image):
    crop_key, flip_key = jax.random.split(key)
    offsets = jax.random.randint(crop_key, (2,), 0, 2 * pad + 1)
    crop = jax.lax.dynamic_slice(
        padded_image, (offsets[0], offsets[1], 0), (height, width, channels))
    if not dataset.flip:
      return crop
    flip = jax.random.bernoulli(flip_key, 0.5)
    return jnp.where(flip, crop[:, ::-1, :], crop)

  return jax.vmap(one)(keys, padded)
