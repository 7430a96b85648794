"""PyTorch twins of the Flax CIFAR models in `models/`, and a PyTorch Padam.

Only for `benchmarks/vs_pytorch.py`, which times one training step of each
framework on the same architectures. Written for this project from the Flax
definitions in `models/` (and their docstrings describing the Padam authors'
PyTorch models), so layer for layer they are the same networks:

* VGG16: thirteen conv3x3 (padding 1, *with* bias) + BatchNorm + ReLU, 2x2
  max-pools after convs 2, 4, 7, 10, 13 (32x32 -> 1x1), flatten to 512, one
  Linear.
* ResNet18: conv3x3(64, no bias) + BN + ReLU stem, no max-pool; four stages
  of two post-activation BasicBlocks (64/128/256/512, first strides 1/2/2/2);
  1x1 conv + BN projection where stride or width changes; 4x4 average pool;
  Linear.
* WRN-16-4 (the authors' `WResNet_cifar10`, not Zagoruyko & Komodakis'):
  the same BasicBlock, stem width 64, stages 64/128/256 (strides 1/2/2), two
  blocks each, 8x8 average pool, Linear; convs initialised N(0, 2 / (k*k*out)).
* tiny_cnn: three conv3x3 (no bias) + BN + ReLU of widths 16/32/64, 2x2
  max-pool after the first two, global average pool, Linear.

BatchNorm is PyTorch's default (momentum 0.1, eps 1e-5), which `models.layers.
BatchNorm` reproduces. Parameter counts for 10 classes are asserted against
the Flax models' (`EXPECTED_PARAMETERS`); run this file to check them:

  python benchmarks/torch_models.py

Optimizers:

* `Padam`: the 'authors' formulation of `padax.scale_by_partial_adaptive`
  (the Padam authors' PyTorch code, github uclaml/Padam), vectorised over all
  parameters with `torch._foreach_*` ops, as `torch.optim.Adam(foreach=True)`
  (PyTorch's default on CPU) is. With L2 weight decay added to the gradient:
    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  vmax = max(vmax, v)
    p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(vmax) + eps)^(2 p)
* `PadamLoop`: the same step written per parameter, tensor by tensor, in the
  style of the authors' own optimizer (one Python iteration and a handful of
  small kernels per parameter tensor).
"""

import math
import os
import sys

import torch
from torch import nn
import torch.nn.functional as F

# Parameter counts of the Flax models for 10 classes (models/, docs/README).
EXPECTED_PARAMETERS = {
    'vgg16': 14_728_266,
    'resnet18': 11_173_962,
    'wrn16_4': 2_777_674,
}

VGG16_LAYOUT = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M',
                512, 512, 512, 'M', 512, 512, 512, 'M')


class VGG(nn.Module):
  """VGG with BatchNorm after every conv; 'M' in `layout` is a 2x2 max-pool."""

  def __init__(self, layout, num_classes: int):
    super().__init__()
    layers, in_channels = [], 3
    for item in layout:
      if item == 'M':
        layers.append(nn.MaxPool2d(2, 2))
        continue
      layers += [nn.Conv2d(in_channels, item, 3, padding=1, bias=True),
                 nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
      in_channels = item
    self.features = nn.Sequential(*layers)
    self.classifier = nn.Linear(in_channels, num_classes)

  def forward(self, x):
    return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN, + shortcut (1x1 conv + BN on a shape change), ReLU."""

  def __init__(self, in_channels: int, channels: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(channels)
    self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(channels)
    self.shortcut = nn.Identity()
    if stride != 1 or in_channels != channels:
      self.shortcut = nn.Sequential(
          nn.Conv2d(in_channels, channels, 1, stride, bias=False),
          nn.BatchNorm2d(channels))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu(y + self.shortcut(x))


class ResNet(nn.Module):
  """CIFAR ResNet of post-activation BasicBlocks; `widths` per stage.

  The stem has width `widths[0]`; the first block of every stage but the
  first has stride 2. `pool` is the final average pool's kernel (the whole
  remaining map for 32x32 inputs).
  """

  def __init__(self, widths, blocks_per_stage: int, num_classes: int,
               pool: int):
    super().__init__()
    self.stem = nn.Sequential(
        nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
        nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
    blocks, in_channels = [], widths[0]
    for stage, width in enumerate(widths):
      for block in range(blocks_per_stage):
        stride = 2 if stage > 0 and block == 0 else 1
        blocks.append(BasicBlock(in_channels, width, stride))
        in_channels = width
    self.blocks = nn.Sequential(*blocks)
    self.pool = nn.AvgPool2d(pool)
    self.classifier = nn.Linear(in_channels, num_classes)

  def forward(self, x):
    x = self.pool(self.blocks(self.stem(x)))
    return self.classifier(torch.flatten(x, 1))


class TinyCNN(nn.Module):
  """`models.tiny_cnn`: for quick checks of the benchmark itself."""

  def __init__(self, num_classes: int, widths=(16, 32, 64)):
    super().__init__()
    layers, in_channels = [], 3
    for i, width in enumerate(widths):
      layers += [nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                 nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
      if i < len(widths) - 1:
        layers.append(nn.MaxPool2d(2, 2))
      in_channels = width
    self.features = nn.Sequential(*layers)
    self.classifier = nn.Linear(in_channels, num_classes)

  def forward(self, x):
    return self.classifier(self.features(x).mean(dim=(2, 3)))


def _init_wrn_(model: nn.Module) -> nn.Module:
  """The authors' WRN init: conv weights N(0, 2 / (k*k*out_channels))."""
  for module in model.modules():
    if isinstance(module, nn.Conv2d):
      k_h, k_w = module.kernel_size
      std = math.sqrt(2.0 / (k_h * k_w * module.out_channels))
      nn.init.normal_(module.weight, 0.0, std)
  return model


def vgg16(num_classes: int) -> nn.Module:
  return VGG(VGG16_LAYOUT, num_classes)


def resnet18(num_classes: int) -> nn.Module:
  return ResNet((64, 128, 256, 512), 2, num_classes, pool=4)


def wrn16_4(num_classes: int) -> nn.Module:
  # depth 16 = 6 * 2 + 4: two blocks per stage; widths 16k, 32k, 64k, k = 4.
  return _init_wrn_(ResNet((64, 128, 256), 2, num_classes, pool=8))


def tiny_cnn(num_classes: int) -> nn.Module:
  return TinyCNN(num_classes)


_BUILDERS = {'vgg16': vgg16, 'resnet18': resnet18, 'wrn16_4': wrn16_4,
             'tiny_cnn': tiny_cnn}
MODEL_NAMES = tuple(_BUILDERS)


def count_parameters(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())


def create_model(name: str, num_classes: int = 10) -> nn.Module:
  """Builds model `name`; for 10 classes, checks its parameter count."""
  if name not in _BUILDERS:
    raise ValueError(f'model={name!r} is not known; allowed: '
                     f'{", ".join(MODEL_NAMES)}')
  model = _BUILDERS[name](num_classes)
  expected = EXPECTED_PARAMETERS.get(name) if num_classes == 10 else None
  if expected is not None:
    got = count_parameters(model)
    assert got == expected, (
        f'torch {name} has {got:,} parameters; the Flax model has '
        f'{expected:,}')
  return model


# ---------------------------------------------------------------------------
# Padam.


class _PadamBase(torch.optim.Optimizer):
  """Hyperparameters and state shared by the two Padam implementations."""

  def __init__(self, params, lr=0.1, betas=(0.9, 0.999), eps=1e-8,
               weight_decay=0.0, partial=0.125, amsgrad=True):
    if not 0.0 <= partial <= 0.5:
      raise ValueError(f'partial={partial!r}; allowed: [0, 0.5]')
    super().__init__(params, dict(lr=lr, betas=betas, eps=eps,
                                  weight_decay=weight_decay, partial=partial,
                                  amsgrad=amsgrad))

  def _state(self, param):
    """Per-parameter state, created (zeros) on first use."""
    state = self.state[param]
    if not state:
      state['step'] = 0
      state['exp_avg'] = torch.zeros_like(param)
      state['exp_avg_sq'] = torch.zeros_like(param)
      state['max_exp_avg_sq'] = torch.zeros_like(param)
    return state

  @torch.no_grad()
  def step(self, closure=None):
    loss = None
    if closure is not None:
      with torch.enable_grad():
        loss = closure()
    for group in self.param_groups:
      self._update_group(group)
    return loss

  def _update_group(self, group):
    raise NotImplementedError


class Padam(_PadamBase):
  """Padam, 'authors' formulation, every parameter of a group at once.

  `torch._foreach_*` ops run each stage of the update over the list of
  tensors in one call, as PyTorch's own `foreach` optimizers do. Bias
  corrections are Python floats (the step count is a Python int), as in the
  authors' code.
  """

  def _update_group(self, group):
    params = [p for p in group['params'] if p.grad is not None]
    if not params:
      return
    grads = [p.grad for p in params]
    states = [self._state(p) for p in params]
    exp_avgs = [s['exp_avg'] for s in states]
    exp_avg_sqs = [s['exp_avg_sq'] for s in states]
    b1, b2 = group['betas']
    for s in states:
      s['step'] += 1
    t = states[0]['step']  # Every parameter of a group steps together.

    if group['weight_decay']:
      # L2 added to a copy of the gradient: p.grad itself is left alone.
      grads = torch._foreach_add(grads, params, alpha=group['weight_decay'])
    torch._foreach_mul_(exp_avgs, b1)
    torch._foreach_add_(exp_avgs, grads, alpha=1.0 - b1)
    torch._foreach_mul_(exp_avg_sqs, b2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - b2)
    if group['amsgrad']:
      second = [s['max_exp_avg_sq'] for s in states]
      torch._foreach_maximum_(second, exp_avg_sqs)
    else:
      second = exp_avg_sqs
    denom = torch._foreach_sqrt(second)
    torch._foreach_add_(denom, group['eps'])
    torch._foreach_pow_(denom, 2.0 * group['partial'])
    step_size = (group['lr'] * math.sqrt(1.0 - b2 ** t) /
                 (1.0 - b1 ** t))
    torch._foreach_addcdiv_(params, exp_avgs, denom, value=-step_size)


class PadamLoop(_PadamBase):
  """The same update as `Padam`, one parameter tensor at a time.

  The per-parameter loop of the authors' own optimizer (and of PyTorch's
  optimizers before `foreach`): about ten small kernels and some Python per
  tensor.
  """

  def _update_group(self, group):
    b1, b2 = group['betas']
    for param in group['params']:
      if param.grad is None:
        continue
      grad = param.grad
      state = self._state(param)
      state['step'] += 1
      t = state['step']
      if group['weight_decay']:
        grad = grad.add(param, alpha=group['weight_decay'])
      exp_avg, exp_avg_sq = state['exp_avg'], state['exp_avg_sq']
      exp_avg.mul_(b1).add_(grad, alpha=1.0 - b1)
      exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1.0 - b2)
      if group['amsgrad']:
        torch.maximum(state['max_exp_avg_sq'], exp_avg_sq,
                      out=state['max_exp_avg_sq'])
        denom = state['max_exp_avg_sq'].sqrt().add_(group['eps'])
      else:
        denom = exp_avg_sq.sqrt().add_(group['eps'])
      step_size = (group['lr'] * math.sqrt(1.0 - b2 ** t) /
                   (1.0 - b1 ** t))
      param.addcdiv_(exp_avg, denom.pow_(2.0 * group['partial']),
                     value=-step_size)


def _insertion_order_leaves(tree):
  """Leaves of nested dicts in insertion order (jax.tree sorts the keys)."""
  if isinstance(tree, dict) or hasattr(tree, 'items'):
    return [leaf for value in tree.values()
            for leaf in _insertion_order_leaves(value)]
  return [tree]


def _compare_with_flax() -> None:
  """The same function as the Flax models, checked numerically (if importable).

  Flax creates parameters in the order its modules are called, which is the
  order the PyTorch twins register theirs (conv weight, bias; BN scale,
  bias; ...). The Flax parameters are copied into the PyTorch model in that
  order (conv kernels HWIO -> OIHW, dense (in, out) -> (out, in)), and both
  must give the same logits on the same batch, in training mode (batch
  statistics) and in eval mode.
  """
  try:
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    sys.path.insert(0, os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    import models  # pylint: disable=g-import-not-at-top
  except ImportError:
    return

  def to_torch_layout(array):
    array = np.asarray(array)
    if array.ndim == 4:
      return array.transpose(3, 2, 0, 1)
    return array.T if array.ndim == 2 else array

  x = np.random.default_rng(0).standard_normal((8, 32, 32, 3), np.float32)
  for name in MODEL_NAMES:
    flax_model = models.create_model(name, 10)
    variables = flax_model.init(jax.random.key(0), x[:1], train=False)
    torch_model = create_model(name, 10)
    flax_params = _insertion_order_leaves(variables['params'])
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
    print(f'{name}: {len(torch_params)} parameter tensors of the same shapes; '
          'same logits as Flax (train and eval mode)')


def _self_check() -> None:
  """Parameter counts, and the two Padams against each other and padax."""
  for name in EXPECTED_PARAMETERS:
    model = create_model(name, 10)  # Asserts the count.
    print(f'{name}: {count_parameters(model):,} parameters (matches Flax)')
  _compare_with_flax()

  torch.manual_seed(0)
  shapes = [(3, 3, 3, 8), (8,), (17, 5)]
  init = [torch.randn(s) for s in shapes]
  grads = [[torch.randn(s) for s in shapes] for _ in range(5)]
  kwargs = dict(lr=0.1, weight_decay=5e-4, partial=0.125)
  results = []
  for cls in (Padam, PadamLoop):
    params = [nn.Parameter(x.clone()) for x in init]
    opt = cls(params, **kwargs)
    for step_grads in grads:
      for p, g in zip(params, step_grads):
        p.grad = g.clone()
      opt.step()
    results.append([p.detach().clone() for p in params])
  for a, b in zip(*results):
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
  print('Padam (foreach) == PadamLoop')

  try:
    import jax  # pylint: disable=g-import-not-at-top
    import optax  # pylint: disable=g-import-not-at-top
    sys.path.insert(0, os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    import padax  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  opt = padax.padam(0.1, p=0.125, weight_decay=5e-4)
  params = [jax.numpy.asarray(x.numpy()) for x in init]
  state = opt.init(params)
  for step_grads in grads:
    updates, state = opt.update([jax.numpy.asarray(g.numpy())
                                 for g in step_grads], state, params)
    params = optax.apply_updates(params, updates)
  for a, b in zip(results[0], params):
    torch.testing.assert_close(a, torch.from_numpy(jax.device_get(b).copy()),
                               rtol=1e-5, atol=1e-6)
  print('Padam (torch) == padax.padam (authors formulation), 5 steps')


if __name__ == '__main__':
  _self_check()
