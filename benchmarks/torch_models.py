"""PyTorch twins of the Flax CIFAR models in `models/`, and a PyTorch Padam,
for `benchmarks/vs_pytorch.py`.

Written layer for layer from the Flax definitions (BatchNorm: PyTorch's
default, momentum 0.1, eps 1e-5, which `models.layers.BatchNorm`
reproduces). Run this file to check the logits against the Flax models and
`Padam` against `padax.padam`:

  python benchmarks/torch_models.py
"""

import math
import os
import sys

import torch
from torch import nn
import torch.nn.functional as F

VGG16_LAYOUT = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M',
                512, 512, 512, 'M', 512, 512, 512, 'M')
TINY_CNN_LAYOUT = (16, 'M', 32, 'M', 64)


def conv_bn(in_channels: int, channels: int, kernel: int = 3, stride: int = 1,
            bias: bool = False) -> list:
  """A 'same' convolution and its BatchNorm."""
  return [nn.Conv2d(in_channels, channels, kernel, stride, kernel // 2,
                    bias=bias), nn.BatchNorm2d(channels)]


class VGG(nn.Module):
  """Conv-BatchNorm-ReLU stacks, 'M' in `layout` a 2x2 max-pool, then a
  global average pool (VGG16's last map is 1x1) and a linear classifier."""

  def __init__(self, layout, num_classes: int, bias: bool = True):
    super().__init__()
    layers, in_channels = [], 3
    for item in layout:
      if item == 'M':
        layers.append(nn.MaxPool2d(2, 2))
        continue
      layers += [*conv_bn(in_channels, item, bias=bias), nn.ReLU(inplace=True)]
      in_channels = item
    self.features = nn.Sequential(*layers)
    self.classifier = nn.Linear(in_channels, num_classes)

  def forward(self, x):
    return self.classifier(self.features(x).mean(dim=(2, 3)))


class BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN, + shortcut (1x1 conv + BN on a shape
  change), ReLU."""

  def __init__(self, in_channels: int, channels: int, stride: int):
    super().__init__()
    self.branch = nn.Sequential(*conv_bn(in_channels, channels, 3, stride),
                                nn.ReLU(inplace=True),
                                *conv_bn(channels, channels))
    self.shortcut = nn.Identity()
    if stride != 1 or in_channels != channels:
      self.shortcut = nn.Sequential(*conv_bn(in_channels, channels, 1, stride))

  def forward(self, x):
    return F.relu(self.branch(x) + self.shortcut(x))


class ResNet(nn.Module):
  """CIFAR ResNet of post-activation BasicBlocks; `widths` per stage.

  The stem has width `widths[0]`; the first block of every stage but the
  first has stride 2; a global average pool before the classifier.
  """

  def __init__(self, widths, blocks_per_stage: int, num_classes: int):
    super().__init__()
    self.stem = nn.Sequential(*conv_bn(3, widths[0]), nn.ReLU(inplace=True))
    blocks, in_channels = [], widths[0]
    for stage, width in enumerate(widths):
      for block in range(blocks_per_stage):
        stride = 2 if stage > 0 and block == 0 else 1
        blocks.append(BasicBlock(in_channels, width, stride))
        in_channels = width
    self.blocks = nn.Sequential(*blocks)
    self.classifier = nn.Linear(in_channels, num_classes)

  def forward(self, x):
    return self.classifier(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def _init_wrn_(model: nn.Module) -> nn.Module:
  """The authors' WRN init: conv weights N(0, 2 / (k*k*out_channels))."""
  for module in model.modules():
    if isinstance(module, nn.Conv2d):
      k_h, k_w = module.kernel_size
      std = math.sqrt(2.0 / (k_h * k_w * module.out_channels))
      nn.init.normal_(module.weight, 0.0, std)
  return model


_BUILDERS = {
    'vgg16': lambda n: VGG(VGG16_LAYOUT, n),
    'resnet18': lambda n: ResNet((64, 128, 256, 512), 2, n),
    # The authors' `WResNet_cifar10` (not Zagoruyko & Komodakis'): stem width
    # 64, stages 64/128/256 of two blocks each.
    'wrn16_4': lambda n: _init_wrn_(ResNet((64, 128, 256), 2, n)),
    'tiny_cnn': lambda n: VGG(TINY_CNN_LAYOUT, n, bias=False),
}
MODEL_NAMES = tuple(_BUILDERS)


def count_parameters(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())


def create_model(name: str, num_classes: int = 10) -> nn.Module:
  if name not in _BUILDERS:
    raise ValueError(f'model={name!r} is not known; allowed: '
                     f'{", ".join(MODEL_NAMES)}')
  return _BUILDERS[name](num_classes)


class Padam(torch.optim.Optimizer):
  """Padam, the 'authors' formulation of `padax.scale_by_partial_adaptive`
  (the Padam authors' PyTorch code, github uclaml/Padam), with L2 weight
  decay added to the gradient:

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  vmax = max(vmax, v)
    p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(vmax) + eps)^(2 p)

  Every parameter of a group at once with `torch._foreach_*` ops, as
  `torch.optim.Adam(foreach=True)` (PyTorch's default on CPU) is. Bias
  corrections are Python floats, as in the authors' code.
  """

  def __init__(self, params, lr=0.1, betas=(0.9, 0.999), eps=1e-8,
               weight_decay=0.0, partial=0.125):
    if not 0.0 <= partial <= 0.5:
      raise ValueError(f'partial={partial!r}; allowed: [0, 0.5]')
    super().__init__(params, dict(lr=lr, betas=betas, eps=eps,
                                  weight_decay=weight_decay, partial=partial))

  @torch.no_grad()
  def step(self):
    for group in self.param_groups:
      params = [p for p in group['params'] if p.grad is not None]
      if not params:
        continue
      for p in params:
        if not self.state[p]:  # Zeros on first use.
          self.state[p].update(step=0, **{
              k: torch.zeros_like(p)
              for k in ('exp_avg', 'exp_avg_sq', 'max_exp_avg_sq')})
        self.state[p]['step'] += 1
      states = [self.state[p] for p in params]
      exp_avgs = [s['exp_avg'] for s in states]
      exp_avg_sqs = [s['exp_avg_sq'] for s in states]
      grads = [p.grad for p in params]
      b1, b2 = group['betas']
      t = states[0]['step']  # Every parameter of a group steps together.
      if group['weight_decay']:
        # L2 added to a copy of the gradient: p.grad itself is left alone.
        grads = torch._foreach_add(grads, params, alpha=group['weight_decay'])
      torch._foreach_mul_(exp_avgs, b1)
      torch._foreach_add_(exp_avgs, grads, alpha=1.0 - b1)
      torch._foreach_mul_(exp_avg_sqs, b2)
      torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - b2)
      second = [s['max_exp_avg_sq'] for s in states]
      torch._foreach_maximum_(second, exp_avg_sqs)
      denom = torch._foreach_sqrt(second)
      torch._foreach_add_(denom, group['eps'])
      torch._foreach_pow_(denom, 2.0 * group['partial'])
      step_size = group['lr'] * math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
      torch._foreach_addcdiv_(params, exp_avgs, denom, value=-step_size)


def _self_check() -> None:
  """The same parameter shapes and logits as the Flax models, given the
  same parameters (Flax creates them in the order the twins register
  theirs), in training and eval mode; Padam as padax's."""
  sys.path.insert(0, os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  # pylint: disable=g-import-not-at-top
  from flax import traverse_util
  import jax
  import numpy as np
  import optax
  import models
  import padax
  from training import input_pipeline
  # pylint: enable=g-import-not-at-top

  def to_torch_layout(array):
    array = np.asarray(array)
    if array.ndim == 4:
      return array.transpose(3, 2, 0, 1)
    return array.T if array.ndim == 2 else array

  x = np.random.default_rng(0).standard_normal(
      (8, *input_pipeline.SPECS['cifar10'].image_shape), np.float32)
  for name in MODEL_NAMES:
    flax_model = models.create_model(name, 10)
    variables = flax_model.init(jax.random.key(0), x[:1], train=False)
    torch_model = create_model(name, 10)
    # In insertion order (jax.tree.leaves would sort the keys).
    flax_params = list(traverse_util.flatten_dict(variables['params']).values())
    torch_params = list(torch_model.parameters())
    assert len(flax_params) == len(torch_params), name
    with torch.no_grad():
      for t, f in zip(torch_params, flax_params):
        f = torch.from_numpy(to_torch_layout(f).copy())
        assert t.shape == f.shape, (name, t.shape, f.shape)
        t.copy_(f)
    x_torch = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    # Eval first: a training-mode forward updates PyTorch's running stats.
    for train in (False, True):
      torch_model.train(train)
      with torch.no_grad():
        got = torch_model(x_torch).numpy()
      if train:
        want, _ = flax_model.apply(variables, x, train=True,
                                   mutable=['batch_stats'])
      else:
        want = flax_model.apply(variables, x, train=False)
      np.testing.assert_allclose(got, np.asarray(want), rtol=1e-4, atol=1e-4,
                                 err_msg=f'{name} train={train}')
    print(f'{name}: {len(torch_params)} parameter tensors '
          f'({count_parameters(torch_model):,} values) of the same shapes; '
          'same logits as Flax (train and eval mode)')

  torch.manual_seed(0)
  shapes = [(3, 3, 3, 8), (8,), (17, 5)]
  init = [torch.randn(s) for s in shapes]
  grads = [[torch.randn(s) for s in shapes] for _ in range(5)]
  params = [nn.Parameter(x.clone()) for x in init]
  opt = Padam(params, lr=0.1, weight_decay=5e-4, partial=0.125)
  for step_grads in grads:
    for p, g in zip(params, step_grads):
      p.grad = g.clone()
    opt.step()
  opt = padax.padam(0.1, p=0.125, weight_decay=5e-4)
  jax_params = [jax.numpy.asarray(x.numpy()) for x in init]
  state = opt.init(jax_params)
  for step_grads in grads:
    updates, state = opt.update([jax.numpy.asarray(g.numpy())
                                 for g in step_grads], state, jax_params)
    jax_params = optax.apply_updates(jax_params, updates)
  for a, b in zip(params, jax_params):
    torch.testing.assert_close(
        a.detach(), torch.from_numpy(jax.device_get(b).copy()), rtol=1e-5,
        atol=1e-6)
  print('Padam (torch) == padax.padam (authors formulation), 5 steps')


if __name__ == '__main__':
  _self_check()
