"""Train-step images/s on the CPU: padax (JAX) vs PyTorch, same models, one run.

  python benchmarks/vs_pytorch.py [--models resnet18,vgg16,wrn16_4]
      [--batch-size 128] [--steps 5] [--warmup 1] [--torch-threads 0]
      [--cases torch_padam,torch_sgd,jax_padam,jax_sgd]
  python benchmarks/vs_pytorch.py --cases torch_padam,jax_padam,\
      jax_padam@1-device,jax_padam@xla-defaults     # train.py's set-up vs others

Needs PyTorch (`pip install -r requirements/benchmark.txt`).

Every case times one whole training step (augmentation, forward, loss,
backward, optimizer, training-mode BatchNorm) on a batch of random
CIFAR-shaped uint8 images:

* jax_padam: the jitted step `train.py` runs (`train_step.build`:
  `MeshSteps` and configs/quick.py's Padam, p = 1/8 and lr 0.1 injected,
  L2 5e-4); jax_sgd: the same with the config's 'sgdm' (momentum 0.9).
* torch_padam: the same augmentation with torch ops, forward,
  `F.cross_entropy`, backward and the Padam of `benchmarks/torch_models.py`
  (authors' formulation, `torch._foreach_*`), eager, NCHW; torch_sgd: the
  same with `torch.optim.SGD(momentum=0.9, weight_decay=5e-4, foreach=True)`.

JAX set-ups (a case `jax_...@SETUP`; no suffix is `train.py`): train.py
(mimalloc, `host_devices.CPU_XLA_FLAGS`, `cpu_devices_per_run` devices),
1-device (the same flags, one device, the system's malloc), xla-defaults
(neither: what a plain Flax + Optax program gets). Flags in the caller's
XLA_FLAGS apply to every set-up.

Each framework and set-up runs in its own long-lived worker process (XLA
reads its flags at start-up, and /proc/self/stat then counts only that
case's CPU time); the parent interleaves the cases one step at a time,
rotating their order every round, so drift in the machine's speed hits
every case alike. Reported per case: the median step time over `--steps`
steps after `--warmup` untimed ones, the cores kept busy by its process and
by all others, its CPU seconds per step; then step-time ratios.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

# pylint: disable=g-import-not-at-top,wrong-import-position
import cpu_meter
import run_info
import subprocess_case
import train_step
# pylint: enable=g-import-not-at-top,wrong-import-position

TORCH_CASES = ('torch_padam', 'torch_sgd')
JAX_CASES = ('jax_padam', 'jax_sgd')
DEFAULT_CASES = ','.join(TORCH_CASES + JAX_CASES)
JAX_SETUPS = ('train.py', '1-device', 'xla-defaults')
DEFAULT_MODELS = 'resnet18,vgg16,wrn16_4'

# Shared hyperparameters (configs/quick.py's Padam and the defaults' sgdm).
LR, P, WEIGHT_DECAY, MOMENTUM = 0.1, 0.125, 5e-4, 0.9
NUM_CLASSES = 10


# ---------------------------------------------------------------------------
# Workers: build the cases of one framework for one model, then run steps on
# request. Each `*_cases` returns (make, info): make(case) gives (step, number
# of parameters), step() runs one training step to completion and returns the
# loss.


def torch_cases(model_name, batch_size, threads):
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  import torch_models  # pylint: disable=g-import-not-at-top

  if threads:
    torch.set_num_threads(threads)
  gen = torch.Generator().manual_seed(0)
  images = torch.randint(0, 256, (batch_size, 3, 32, 32), dtype=torch.uint8,
                         generator=gen)
  labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=gen)
  mean = torch.tensor((0.4914, 0.4822, 0.4465)).view(1, 3, 1, 1)
  std = torch.tensor((0.2023, 0.1994, 0.2010)).view(1, 3, 1, 1)
  pad = 4
  span = torch.arange(32)
  batch_index = torch.arange(batch_size).view(-1, 1, 1, 1)
  channel_index = torch.arange(3).view(1, 3, 1, 1)

  def augment(u8):
    # training.augment.augment + normalize, batched: per image a crop
    # offset in [0, 8] of the zero-padded 40x40 image and a coin flip.
    padded = F.pad(u8, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (2, batch_size, 1), generator=gen)
    flip = torch.rand(batch_size, 1, generator=gen) < 0.5
    rows = offsets[0] + span
    cols = offsets[1] + torch.where(flip, span.flip(0), span)
    crop = padded[batch_index, channel_index, rows.view(batch_size, 1, 32, 1),
                  cols.view(batch_size, 1, 1, 32)]
    return (crop.float().div_(255.0) - mean) / std

  def make(name):
    torch.manual_seed(0)
    model = torch_models.create_model(model_name, NUM_CLASSES)
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
  """Before JAX starts: the XLA flags and CPU device count of `setup`."""
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
  if name in JAX_CASES and not setup:
    setup = JAX_SETUPS[0]
  return name, setup


def worker_key(case):
  """(framework, JAX set-up) of the worker process that runs `case`."""
  return ('torch' if case in TORCH_CASES else 'jax', split_case(case)[1])


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


def worker_main(args):
  """Runs one step of the case named on each stdin line; replies in JSON on
  the real stdout."""
  reply = subprocess_case.reply_channel()
  t0 = time.perf_counter()
  if args.worker == 'torch':
    make, info = torch_cases(args.models, args.batch_size, args.torch_threads)
  else:
    apply_jax_setup(args.jax_setup, args.models, args.batch_size)
    make, info = jax_cases(args.models, args.batch_size)
  cases, info['parameters'] = {}, {}
  for name in args.cases.split(','):
    cases[name], info['parameters'][name] = make(name)
  info['build_s'] = time.perf_counter() - t0
  reply.write(json.dumps(dict(ready=True, info=info)) + '\n')
  for case in sys.stdin:
    with cpu_meter.CpuMeter() as meter:
      t = time.perf_counter()
      loss = cases[case.strip()]()
      seconds = time.perf_counter() - t
    reply.write(json.dumps(dict(
        time=seconds, loss=loss, wall_s=meter.wall_s,
        own_cpu_s=meter.own_cpu_s, other_cpu_s=meter.other_cpu_s)) + '\n')


class Worker:
  """A worker subprocess for one framework and one model: long-lived, unlike
  subprocess_case.run's, since a process per step would recompile each time.
  """

  def __init__(self, framework, setup, model, cases, args):
    command = [sys.executable, os.path.abspath(__file__), '--worker',
               framework, '--models', model, '--cases', ','.join(cases),
               '--batch-size', str(args.batch_size), '--torch-threads',
               str(args.torch_threads), '--jax-setup', setup or JAX_SETUPS[0]]
    self.process = subprocess.Popen(command, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True,
                                    bufsize=1)
    self.info = self._read()['info']

  def _read(self):
    line = self.process.stdout.readline()
    if not line:
      code = self.process.wait()
      raise RuntimeError(f'benchmark worker {self.process.args} exited with '
                         f'{code} (its stderr is above)')
    return json.loads(line)

  def step(self, case):
    self.process.stdin.write(case + '\n')
    return self._read()

  def close(self):
    self.process.stdin.close()
    self.process.wait()


# ---------------------------------------------------------------------------
# Parent: interleave, summarise, print.


def measure_model(model, cases, args):
  """All cases of one model, interleaved; returns one result dict per case."""
  by_worker = {}
  for case in cases:
    by_worker.setdefault(worker_key(case), []).append(case)
  # Started one after the other: building (and compiling) alone.
  workers = {key: Worker(*key, model, names, args)
             for key, names in by_worker.items()}
  owner = {case: workers[worker_key(case)] for case in cases}
  results = {case: dict(model=model, case=case, times=[], wall_s=0.0,
                        own_cpu_s=0.0, other_cpu_s=0.0) for case in cases}
  try:
    for case in cases:
      results[case]['first_step_s'] = owner[case].step(case)['time']
      for _ in range(args.warmup - 1):
        owner[case].step(case)
    for round_index in range(args.steps):
      shift = round_index % len(cases)
      for case in cases[shift:] + cases[:shift]:
        out, r = owner[case].step(case), results[case]
        r['times'].append(out['time'])
        r['loss'] = out['loss']
        r['wall_s'] += out['wall_s']
        for key in ('own_cpu_s', 'other_cpu_s'):
          r[key] = (None if r[key] is None or out[key] is None
                    else r[key] + out[key])
  finally:
    for w in workers.values():
      w.close()

  for case, r in results.items():
    info = dict(owner[case].info)
    r['parameters'] = info.pop('parameters')[case]
    r['batch_size'] = args.batch_size
    r['steps'] = len(r['times'])
    r['median_s'] = statistics.median(r['times'])
    r['images_per_second'] = args.batch_size / r['median_s']
    # CPU seconds per step: the work done, which (unlike the wall time)
    # hardly depends on how much of the machine other processes take.
    r['own_cpu_s_per_step'] = (None if r['own_cpu_s'] is None
                               else r['own_cpu_s'] / r['steps'])
    r['own_cores'] = cpu_meter.cores(r['own_cpu_s'], r['wall_s'])
    r['other_cores'] = cpu_meter.cores(r['other_cpu_s'], r['wall_s'])
    r['framework_info'] = info
  return [results[c] for c in cases]


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
      # Step i of both cases ran in the same round, close in time: the median
      # of these ratios is less sensitive to drift in the machine's load.
      summary[key + '_paired'] = statistics.median(
          x / y for x, y in zip(by_case[a]['times'], by_case[b]['times']))
  return summary


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default=DEFAULT_MODELS,
                      help='comma-separated: resnet18, vgg16, wrn16_4, '
                      'tiny_cnn')
  parser.add_argument('--batch-size', type=int, default=128)
  parser.add_argument('--steps', type=int, default=5,
                      help='timed steps per case (one per round)')
  parser.add_argument('--warmup', type=int, default=1,
                      help='untimed steps per case first (>= 1: the first '
                      'compiles)')
  parser.add_argument('--torch-threads', type=int, default=0,
                      help="torch.set_num_threads; 0 keeps PyTorch's default "
                      '(the number of physical cores)')
  parser.add_argument('--cases', default=DEFAULT_CASES,
                      help=f'comma-separated, of {", ".join(TORCH_CASES + JAX_CASES)}')
  parser.add_argument('--worker', choices=('torch', 'jax'),
                      help=argparse.SUPPRESS)
  parser.add_argument('--jax-setup', choices=JAX_SETUPS,
                      default=JAX_SETUPS[0], help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker == 'jax' and args.jax_setup == 'train.py':
    # Before anything else: may restart this worker under mimalloc, as
    # train.py restarts itself.
    from training import allocator  # pylint: disable=g-import-not-at-top
    allocator.use_mimalloc()
  if args.worker:
    worker_main(args)
    return

  cases = args.cases.split(',')
  unknown = [c for c in cases
             if c not in TORCH_CASES and not (
                 split_case(c)[0] in JAX_CASES and
                 split_case(c)[1] in JAX_SETUPS)]
  if unknown or not cases:
    parser.error(f'unknown cases {unknown}')
  if args.warmup < 1 or args.steps < 1:
    parser.error('--warmup and --steps must be >= 1')

  print('\n'.join([
      *run_info.header_lines(
          ('torch', 'jax', 'jaxlib', 'flax', 'optax', 'numpy')),
      f'# batch {args.batch_size}, random 32x32x3 uint8 inputs, training '
      f'mode; median of {args.steps} steps per case after {args.warmup} '
      'warm-up step(s); cases interleaved one step at a time']), flush=True)
  all_rows, summaries = [], []
  for model in args.models.split(','):
    rows = measure_model(model, cases, args)
    all_rows += rows
    summaries.append(summarise(model, rows))
    print(f'# {model} done', file=sys.stderr, flush=True)

  info = {}
  for r in all_rows:
    info.setdefault(worker_key(r['case']), r['framework_info'])
  if ('torch', '') in info:
    torch_info = info['torch', '']
    print(f'# torch threads: {torch_info["threads"]} intra-op, '
          f'{torch_info["interop_threads"]} inter-op'
          f'{"" if args.torch_threads else " (PyTorch default)"}')
  for setup in JAX_SETUPS:
    if ('jax', setup) in info:
      jax_info = info['jax', setup]
      print(f'# jax set-up {setup}: devices {jax_info["devices"]}, '
            f'XLA_FLAGS={jax_info["xla_flags"]!r}, '
            f'{jax_info.get("allocator", "?")}')
  print(f'# load average at end {os.getloadavg()[0]:.2f}')
  print()
  fmt = cpu_meter.fmt
  print('| model | case | images/s | median step s | min-max s | own cores | '
        'other cores | own CPU s/step | first step s |')
  print('|---|---|---:|---:|---:|---:|---:|---:|---:|')
  for r in all_rows:
    print(f'| {r["model"]} | {r["case"]} | {r["images_per_second"]:.1f} | '
          f'{r["median_s"]:.3f} | {min(r["times"]):.3f}-{max(r["times"]):.3f}'
          f' | {fmt(r["own_cores"])} | {fmt(r["other_cores"])} '
          f'| {fmt(r["own_cpu_s_per_step"])} '
          f'| {r["first_step_s"]:.2f} |')
  print()
  columns = [f'{a}_over_{b}' for a, b in ratio_pairs(cases)]
  columns = [k for k in columns if any(k in s for s in summaries)]
  print('Step-time ratios: median / median, and in brackets the median of '
        'the per-round ratios (jax over torch > 1: JAX slower)')
  print()
  print('| model | ' + ' | '.join(c.replace('_over_', ' / ')
                                   for c in columns) + ' |')
  print('|---|' + '---:|' * len(columns))
  for s in summaries:
    print(f'| {s["model"]} | ' + ' | '.join(
        f'{fmt(s.get(c), ".3f")} ({fmt(s.get(c + "_paired"), ".3f")})'
        for c in columns) + ' |')
  print()
  for r in all_rows:
    print(json.dumps({k: v for k, v in r.items() if k != 'framework_info'}))
  for s in summaries:
    print(json.dumps(dict(summary=True, **s)))


if __name__ == '__main__':
  main()
