"""Train-step images/s on the CPU: padax (JAX) vs PyTorch, same models, one run.

  python benchmarks/vs_pytorch.py [--models resnet18,vgg16,wrn16_4]
      [--batch-size 128] [--steps 5] [--warmup 1]
      [--cases torch_padam,torch_sgd,jax_padam,jax_sgd]
  python benchmarks/vs_pytorch.py --cases torch_padam,jax_padam,\
      jax_padam@1-device,jax_padam@xla-defaults  # train.py's set-up vs others

Needs PyTorch (`pip install -r requirements/benchmark.txt`). jax_padam and
jax_sgd: the jitted step train.py runs (`train_step.build`, configs/quick.py's
Padam or its 'sgdm'); torch_padam and torch_sgd: the same augmentation,
forward, loss, backward and optimizer in eager PyTorch (NCHW), with the
models and Padam of benchmarks/torch_models.py. Each framework and JAX set-up
(`jax_...@SETUP`, see apply_jax_setup) runs in its own long-lived server
process; the parent interleaves the cases one step at a time.
"""

import argparse
import functools
import json
import os
import sys
import time

import harness
import subprocess_case
import train_step
from training import allocator  # pylint: disable=g-bad-import-order

TORCH_CASES = ('torch_padam', 'torch_sgd')
JAX_CASES = ('jax_padam', 'jax_sgd')
JAX_SETUPS = ('train.py', '1-device', 'xla-defaults')

# Shared hyperparameters (configs/quick.py's Padam and the defaults' sgdm).
LR, P, WEIGHT_DECAY, MOMENTUM = 0.1, 0.125, 5e-4, 0.9


# Servers: each `*_cases` returns (make, info): make(case) gives (step, number
# of parameters), step() runs one training step to completion and returns the
# loss.


def torch_cases(model_name, batch_size):
  # pylint: disable=g-import-not-at-top
  import torch
  import torch.nn.functional as F
  import torch_models
  # pylint: enable=g-import-not-at-top
  gen = torch.Generator().manual_seed(0)
  dataset = train_step.cifar10()
  size, _, channels = dataset['image_shape']  # Square images.
  classes = dataset['num_classes']
  images = torch.randint(0, 256, (batch_size, channels, size, size),
                         dtype=torch.uint8, generator=gen)
  labels = torch.randint(0, classes, (batch_size,), generator=gen)
  mean = torch.tensor((0.4914, 0.4822, 0.4465)).view(1, 3, 1, 1)
  std = torch.tensor((0.2023, 0.1994, 0.2010)).view(1, 3, 1, 1)
  pad = 4
  span = torch.arange(size)
  batch_index = torch.arange(batch_size).view(-1, 1, 1, 1)
  channel_index = torch.arange(channels).view(1, channels, 1, 1)

  def augment(u8):
    # training.augment.augment + normalize, batched: per image a random crop
    # of the zero-padded image and a coin flip.
    padded = F.pad(u8, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (2, batch_size, 1), generator=gen)
    flip = torch.rand(batch_size, 1, generator=gen) < 0.5
    rows = offsets[0] + span
    cols = offsets[1] + torch.where(flip, span.flip(0), span)
    crop = padded[batch_index, channel_index,
                  rows.view(batch_size, 1, size, 1),
                  cols.view(batch_size, 1, 1, size)]
    return (crop.float().div_(255.0) - mean) / std

  def make(name):
    torch.manual_seed(0)
    model = torch_models.create_model(model_name, classes)
    model.train()
    if name == 'torch_padam':
      opt = torch_models.Padam(model.parameters(), lr=LR, partial=P,
                               weight_decay=WEIGHT_DECAY)
    else:
      opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM,
                            weight_decay=WEIGHT_DECAY, foreach=True)

    def step():
      logits = model(augment(images))
      loss = F.cross_entropy(logits, labels)
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      # As the JAX step's metrics; eager CPU PyTorch has finished here anyway.
      (logits.argmax(1) == labels).sum().item()
      return loss.item()

    return step, torch_models.count_parameters(model)

  return make, dict(threads=torch.get_num_threads(),
                    interop_threads=torch.get_num_interop_threads())


def apply_jax_setup(setup, model_name, batch_size):
  """Before JAX starts: the XLA flags and CPU device count of `setup`.

  train.py: host_devices.CPU_XLA_FLAGS and cpu_devices_per_run devices (and
  mimalloc, see main); 1-device: the same flags on one device, the system's
  malloc; xla-defaults: neither. The caller's XLA_FLAGS apply to every one.
  """
  from configs import quick  # pylint: disable=g-import-not-at-top
  from training import host_devices  # pylint: disable=g-import-not-at-top
  if setup in ('train.py', '1-device'):
    host_devices.set_cpu_xla_flags()
  if setup == 'train.py':
    config = quick.get_config()
    config.model, config.batch_size = model_name, batch_size
    host_devices.split_cpu(host_devices.cpu_devices_per_run(config))


def split_case(case):
  """'jax_padam@1-device' -> ('jax_padam', '1-device'); torch: setup ''."""
  name, _, setup = case.partition('@')
  return name, setup or ('' if name in TORCH_CASES else JAX_SETUPS[0])


def worker_key(case):
  """(framework, JAX set-up) of the server process that runs `case`."""
  return case.split('_')[0], split_case(case)[1]


def jax_cases(model_name, batch_size):
  import jax  # pylint: disable=g-import-not-at-top
  from configs import default, quick  # pylint: disable=g-import-not-at-top
  from training import allocator  # pylint: disable=g-import-not-at-top

  def make(case):
    config = quick.get_config()  # Padam p=1/8, lr 0.1, L2 5e-4.
    if split_case(case)[0] == 'jax_sgd':
      config = default.set_optimizer(config, 'sgdm')
      assert config.optimizer.momentum == MOMENTUM
    else:
      assert config.optimizer.p == P
    assert (config.optimizer.learning_rate,
            config.optimizer.weight_decay) == (LR, WEIGHT_DECAY)
    steps, state, batch = train_step.build(model_name, batch_size, config)
    holder = [state]

    def step():
      holder[0], metrics = steps.train_step(holder[0], batch)
      jax.block_until_ready((holder[0], metrics))
      return float(metrics['loss_sum'] / metrics['count'])

    return step, sum(x.size for x in jax.tree.leaves(state.params))

  return make, dict(devices=[str(d) for d in jax.devices()],
                    xla_flags=os.environ.get('XLA_FLAGS', ''),
                    allocator=allocator.describe())


def serve(framework, setup, model, cases, batch_size):
  """In a subprocess_case.Server: builds `cases` of one framework and JAX
  set-up for `model`; each call times one step of a case."""
  t0 = time.perf_counter()
  if framework == 'torch':
    make, info = torch_cases(model, batch_size)
  else:
    apply_jax_setup(setup, model, batch_size)
    make, info = jax_cases(model, batch_size)
  steps, info['parameters'] = {}, {}
  for name in cases:
    steps[name], info['parameters'][name] = make(name)
  info['build_s'] = time.perf_counter() - t0

  def timed(step):
    with harness.CpuMeter() as meter:
      t = time.perf_counter()
      loss = step()
      seconds = time.perf_counter() - t
    return dict(time=seconds, loss=loss, wall_s=meter.wall_s,
                own_cpu_s=meter.own_cpu_s, other_cpu_s=meter.other_cpu_s)

  return {name: functools.partial(timed, step)
          for name, step in steps.items()}, info


def measure_model(model, cases, args):
  """All cases of one model, interleaved; returns one result dict per case."""
  by_worker = {}
  for case in cases:
    by_worker.setdefault(worker_key(case), []).append(case)
  # Started one after the other: building (and compiling) alone. train.py's
  # set-up runs under mimalloc, as train.py restarts itself.
  workers = {(framework, setup): subprocess_case.Server(serve, dict(
      framework=framework, setup=setup, model=model, cases=names,
      batch_size=args.batch_size), env=(
          allocator.mimalloc_environment(os.environ) if setup == 'train.py'
          else None)) for (framework, setup), names in by_worker.items()}
  owner = {case: workers[worker_key(case)] for case in cases}
  tallies = {case: harness.Tally() for case in cases}
  first, loss = {}, {}
  try:
    for case in cases:
      first[case] = owner[case].call(case)['time']
      for _ in range(args.warmup - 1):
        owner[case].call(case)
    for order in harness.rounds(cases, args.steps):
      for case in order:
        out = owner[case].call(case)
        loss[case] = out['loss']
        tallies[case].add(out['time'], out['wall_s'], out['own_cpu_s'],
                          out['other_cpu_s'])
  finally:
    for w in workers.values():
      w.close()
  rows = []
  for case in cases:
    r = dict(model=model, case=case, batch_size=args.batch_size,
             steps=args.steps, first_step_s=first[case], loss=loss[case],
             parameters=owner[case].info['parameters'][case],
             **tallies[case].summary())
    r['images_per_second'] = args.batch_size / r['median_s']
    # CPU seconds per step: the work done, which (unlike the wall time)
    # hardly depends on how much of the machine other processes take.
    r['own_cpu_s_per_step'] = (None if r['own_cpu_s'] is None
                               else r['own_cpu_s'] / args.steps)
    rows.append(r)
  return rows, {key: w.info for key, w in workers.items()}


def ratio_pairs(cases):
  """(a, b) pairs of cases whose step-time ratio a / b is reported: padam /
  sgd per framework, then each JAX case over PyTorch's (> 1: JAX slower)."""
  return [('jax_padam', 'jax_sgd'), ('torch_padam', 'torch_sgd')] + [
      (c, split_case(c)[0].replace('jax_', 'torch_'))
      for c in cases if c not in TORCH_CASES]


def summarise(model, rows):
  by_case = {r['case']: r for r in rows}
  summary = dict(model=model)
  for a, b in ratio_pairs(by_case):
    if a in by_case and b in by_case:
      key = f'{a}_over_{b}'
      summary[key] = by_case[a]['median_s'] / by_case[b]['median_s']
      summary[key + '_paired'] = harness.paired_median(
          by_case[a]['times'], by_case[b]['times'])
  return summary


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='resnet18,vgg16,wrn16_4',
                      help='comma-separated: resnet18, vgg16, wrn16_4, '
                      'tiny_cnn')
  parser.add_argument('--batch-size', type=int, default=128)
  parser.add_argument('--steps', type=int, default=5,
                      help='timed steps per case (one per round)')
  parser.add_argument('--warmup', type=int, default=1,
                      help='untimed steps per case first (>= 1: the first '
                      'compiles)')
  parser.add_argument('--cases', default=','.join(TORCH_CASES + JAX_CASES),
                      help=f'comma-separated, of {TORCH_CASES + JAX_CASES}, '
                      f'a JAX case optionally @ one of {JAX_SETUPS}')
  args = parser.parse_args()

  cases = args.cases.split(',')
  unknown = [c for c in cases
             if c not in TORCH_CASES and not (
                 split_case(c)[0] in JAX_CASES and
                 split_case(c)[1] in JAX_SETUPS)]
  if unknown or not cases:
    parser.error(f'unknown cases {unknown}')
  if args.warmup < 1 or args.steps < 1:
    parser.error('--warmup and --steps must be >= 1')

  harness.print_header(
      f'# batch {args.batch_size}, random uint8 inputs of CIFAR-10\'s shape, '
      f'training mode; median of {args.steps} steps per case after '
      f'{args.warmup} warm-up step(s); cases interleaved one step at a time',
      packages=('torch', 'jax', 'jaxlib', 'flax', 'optax', 'numpy'))
  all_rows, summaries, infos = [], [], {}
  for model in args.models.split(','):
    rows, info = measure_model(model, cases, args)
    all_rows += rows
    summaries.append(summarise(model, rows))
    infos.update(info)
    print(f'# {model} done', file=sys.stderr, flush=True)
  for (framework, setup), info in infos.items():
    info.pop('parameters')
    print(f'# {framework} {setup}: {json.dumps(info)}')
  print(f'# load average at end {os.getloadavg()[0]:.2f}')
  print()
  fmt = harness.fmt
  print('\n'.join(harness.table(
      ('model', 'case', 'images/s', 'median step s', 'min-max s',
       'own cores', 'other cores', 'own CPU s/step', 'first step s'),
      [(r['model'], r['case'], f'{r["images_per_second"]:.1f}',
        f'{r["median_s"]:.3f}', f'{min(r["times"]):.3f}-{max(r["times"]):.3f}',
        fmt(r['own_cores']), fmt(r['other_cores']),
        fmt(r['own_cpu_s_per_step']), f'{r["first_step_s"]:.2f}')
       for r in all_rows])))
  print()
  columns = [f'{a}_over_{b}' for a, b in ratio_pairs(cases)]
  columns = [k for k in columns if any(k in s for s in summaries)]
  print('Step-time ratios: median / median, and in brackets the median of '
        'the per-round ratios (jax over torch > 1: JAX slower)')
  print()
  print('\n'.join(harness.table(
      ['model'] + [c.replace('_over_', ' / ') for c in columns],
      [[s['model']] + [f'{fmt(s.get(c), ".3f")} '
                       f'({fmt(s.get(c + "_paired"), ".3f")})'
                       for c in columns] for s in summaries])))
  print()
  for r in all_rows + [dict(summary=True, **s) for s in summaries]:
    print(json.dumps(r))


if __name__ == '__main__':
  main()
