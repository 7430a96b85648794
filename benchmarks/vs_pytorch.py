"""Train-step images/s on the CPU: padax (JAX) vs PyTorch, same models, one run.

  python benchmarks/vs_pytorch.py [--models resnet18,vgg16,wrn16_4]
      [--batch-size 128] [--steps 5] [--warmup 1] [--torch-threads 0]
      [--cases torch_padam,torch_padam_loop,torch_sgd,jax_padam,jax_sgd]
  python benchmarks/vs_pytorch.py --cases torch_padam,jax_padam,\
      jax_padam@1-device,jax_padam@xla-defaults     # train.py's set-up vs others

Needs PyTorch (`pip install -e .[benchmark]`, i.e. torch==2.13.0).

Every case times one whole training step on a batch of random CIFAR-shaped
uint8 images and labels, the model in training mode (BatchNorm on batch
statistics, running averages updated):

* jax_padam: `training.train_lib.MeshSteps.train_step`, the jitted step
  `train.py` runs: on-device augmentation (random crop of the 4-pixel
  zero-padded image + horizontal flip) and normalisation, forward, softmax
  cross-entropy, backward, the optimizer, donated state. The optimizer is
  built as train.py builds it from `configs/quick.py` (Padam, 'authors'
  formulation, p = 1/8 and lr 0.1 injected with `optax.inject_hyperparams`,
  L2 weight decay 5e-4), as `benchmarks/train_step.py` does.
* jax_sgd: the same with the config's optimizer set to 'sgdm'
  (`optax.sgd(0.1, momentum=0.9)` after L2 5e-4, injected likewise).
* jax_padam_const, jax_sgd_plain (not run by default): the same step with
  `padax.padam(0.1, p=1/8, weight_decay=5e-4)` and `optax.sgd(0.1,
  momentum=0.9)` + L2 5e-4 built directly, hyperparameters as constants.
* torch_padam: the same augmentation and normalisation written with torch
  ops on the batch (random offsets and flips, one advanced-indexing gather),
  forward, `F.cross_entropy`, backward, the Padam step of
  `benchmarks/torch_models.py` (authors' formulation, vectorised with
  `torch._foreach_*`), lr 0.1, p = 1/8, L2 5e-4. Eager PyTorch, NCHW.
* torch_padam_loop: the same with the per-parameter-loop Padam.
* torch_sgd: the same with `torch.optim.SGD(lr=0.1, momentum=0.9,
  weight_decay=5e-4, foreach=True)` (on the CPU PyTorch's default is the
  per-parameter loop; foreach matches torch_padam).
* torch_padam_cl (not run by default): torch_padam with the model and the
  input in channels_last memory format.

JAX set-ups (a case `jax_...@SETUP`; no suffix is `train.py`), each in its
own worker process since XLA reads its flags and device count at start-up:

* train.py: as `train.py` sets up a CPU host: mimalloc as the allocator
  (`training.allocator`: the worker restarts itself under it, where
  installed), `training.host_devices`' CPU_XLA_FLAGS and the batch data
  parallel over `cpu_devices_per_run` devices (by model: 4 for tiny_cnn, 1
  for the paper's models).
* 1-device: the same XLA flags, one device, the system's malloc.
* xla-defaults: neither (XLA's own CPU defaults, one device): what a plain
  Flax + Optax program gets.

Flags in the caller's XLA_FLAGS apply to every set-up and win over
CPU_XLA_FLAGS.

Reported per case: median step time (images/s = batch / median) over
`--steps` steps after `--warmup` untimed ones (the first includes JAX's
compilation), and the average number of cores kept busy during the timed
steps by the case's process (`own cores`) and by every other process on the
machine (`other cores`, i.e. contention), and the case's CPU seconds per step
(the work it does, much less sensitive to contention than its wall time).

How: each framework runs in its own worker process (one per model), so their
thread pools never share a process and /proc/self/stat counts only that
framework's CPU time. The parent interleaves the cases one step at a time,
rotating their order every round, so drift in the machine's speed (or other
load) hits every case alike. Printed: the machine, versions and date, a
markdown table, a summary table (padam / sgd step-time ratios, JAX vs
PyTorch), then the same results as JSON lines.
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
# pylint: enable=g-import-not-at-top,wrong-import-position

TORCH_CASES = ('torch_padam', 'torch_padam_loop', 'torch_sgd', 'torch_padam_cl')
JAX_CASES = ('jax_padam', 'jax_sgd', 'jax_padam_const', 'jax_sgd_plain')
DEFAULT_CASES = 'torch_padam,torch_padam_loop,torch_sgd,jax_padam,jax_sgd'
JAX_SETUPS = ('train.py', '1-device', 'xla-defaults')
DEFAULT_MODELS = 'resnet18,vgg16,wrn16_4'

# Shared hyperparameters (configs/quick.py's Padam and the defaults' sgdm).
LR, P, WEIGHT_DECAY, MOMENTUM = 0.1, 0.125, 5e-4, 0.9
NUM_CLASSES = 10


# ---------------------------------------------------------------------------
# Workers: build the cases of one framework for one model, then run steps on
# request. Each `make_*` returns {case: step}, step() runs one training step
# to completion and returns the loss.


def make_torch_cases(model_name, batch_size, names, threads):
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
    channels_last = name == 'torch_padam_cl'
    model = torch_models.create_model(model_name, NUM_CLASSES)
    if channels_last:
      model = model.to(memory_format=torch.channels_last)
    model.train()
    if name in ('torch_padam', 'torch_padam_cl'):
      opt = torch_models.Padam(model.parameters(), lr=LR, partial=P,
                               weight_decay=WEIGHT_DECAY)
    elif name == 'torch_padam_loop':
      opt = torch_models.PadamLoop(model.parameters(), lr=LR, partial=P,
                                   weight_decay=WEIGHT_DECAY)
    else:
      opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM,
                            weight_decay=WEIGHT_DECAY, foreach=True)

    def step():
      x = augment(images)
      if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
      logits = model(x)
      loss = F.cross_entropy(logits, labels)
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      # As the JAX step's metrics; eager CPU PyTorch has finished here anyway.
      (logits.argmax(1) == labels).sum().item()
      return loss.item()

    return step, torch_models.count_parameters(model)

  cases, counts = {}, {}
  for name in names:
    cases[name], counts[name] = make(name)
  info = dict(threads=torch.get_num_threads(),
              interop_threads=torch.get_num_interop_threads(),
              parameters=counts)
  return cases, info


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


def make_jax_cases(model_name, batch_size, names):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import models  # pylint: disable=g-import-not-at-top
  import padax  # pylint: disable=g-import-not-at-top
  from configs import default, quick  # pylint: disable=g-import-not-at-top
  from training import optimizers, train_lib  # pylint: disable=g-import-not-at-top

  def optimizer_for(name):
    config = quick.get_config()  # Padam p=1/8, lr 0.1, L2 5e-4.
    if name == 'jax_padam':
      assert (config.optimizer.p, config.optimizer.learning_rate,
              config.optimizer.weight_decay) == (P, LR, WEIGHT_DECAY)
      return optimizers.create_optimizer(config, steps_per_epoch=390)
    if name == 'jax_sgd':
      config = default.set_optimizer(config, 'sgdm')
      assert (config.optimizer.momentum, config.optimizer.learning_rate,
              config.optimizer.weight_decay) == (MOMENTUM, LR, WEIGHT_DECAY)
      return optimizers.create_optimizer(config, steps_per_epoch=390)
    if name == 'jax_padam_const':
      return padax.padam(LR, p=P, weight_decay=WEIGHT_DECAY)
    if name == 'jax_sgd_plain':
      return optax.chain(optax.add_decayed_weights(WEIGHT_DECAY),
                         optax.sgd(LR, momentum=MOMENTUM))
    raise ValueError(name)

  model = models.create_model(model_name, NUM_CLASSES)
  mesh = train_lib.make_mesh()
  rng = np.random.default_rng(0)
  host_batch = {
      'images': rng.integers(0, 256, (batch_size, 32, 32, 3), np.uint8),
      'labels': rng.integers(0, NUM_CLASSES, (batch_size,), np.int32)}

  def make(case):
    optimizer = optimizer_for(split_case(case)[0])
    steps = train_lib.MeshSteps(mesh, model, optimizer)
    state = jax.jit(
        lambda r: train_lib.create_train_state(r, model, optimizer),
        out_shardings=steps.replicated)(jax.random.key(0))
    batch = steps.shard(host_batch)
    holder = [state]

    def step():
      holder[0], metrics = steps.train_step(holder[0], batch)
      jax.block_until_ready((holder[0], metrics))
      return float(metrics['loss_sum'] / metrics['count'])

    count = sum(x.size for x in jax.tree.leaves(state.params))
    return step, count

  cases, counts = {}, {}
  for name in names:
    cases[name], counts[name] = make(name)
  from training import allocator  # pylint: disable=g-import-not-at-top
  info = dict(devices=[str(d) for d in jax.devices()], parameters=counts,
              xla_flags=os.environ.get('XLA_FLAGS', ''),
              allocator=allocator.describe())
  return cases, info


def worker_main(args):
  """Serves 'run' requests on stdin with JSON replies on the real stdout."""
  reply = subprocess_case.reply_channel()
  names = args.cases.split(',')
  t0 = time.perf_counter()
  if args.worker == 'torch':
    cases, info = make_torch_cases(args.models, args.batch_size, names,
                                   args.torch_threads)
  else:
    apply_jax_setup(args.jax_setup, args.models, args.batch_size)
    cases, info = make_jax_cases(args.models, args.batch_size, names)
  info['build_s'] = time.perf_counter() - t0
  reply.write(json.dumps(dict(ready=True, info=info)) + '\n')
  for line in sys.stdin:
    request = json.loads(line)
    step = cases[request['case']]
    times, loss = [], None
    with cpu_meter.CpuMeter() as meter:
      for _ in range(request['steps']):
        t = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t)
    reply.write(json.dumps(dict(
        times=times, loss=loss, wall_s=meter.wall_s, own_cpu_s=meter.own_cpu_s,
        other_cpu_s=meter.other_cpu_s)) + '\n')


class Worker:
  """A worker subprocess for one framework and one model.

  Long-lived, unlike benchmarks/subprocess_case.run's one call per process:
  the parent interleaves the cases one step at a time across workers, and a
  process per step would rebuild and recompile every case each time.
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

  def run(self, case, steps):
    self.process.stdin.write(json.dumps(dict(case=case, steps=steps)) + '\n')
    return self._read()

  def close(self):
    self.process.stdin.close()
    self.process.wait()


# ---------------------------------------------------------------------------
# Parent: interleave, summarise, print.


def measure_model(model, cases, args):
  """All cases of one model, interleaved; returns one result dict per case."""
  by_framework = {}
  for case in cases:
    by_framework.setdefault(worker_key(case), []).append(case)
  # Started one after the other: building (and compiling) alone.
  workers = {key: Worker(*key, model, names, args)
             for key, names in by_framework.items()}
  owner = {case: workers[fw] for fw, names in by_framework.items()
           for case in names}
  try:
    results = {case: dict(model=model, case=case, first_step_s=None,
                          times=[], wall_s=0.0, own_cpu_s=0.0,
                          other_cpu_s=0.0, loss=None) for case in cases}
    for case in cases:
      for i in range(args.warmup):
        out = owner[case].run(case, 1)
        if i == 0:
          results[case]['first_step_s'] = out['times'][0]
    for round_index in range(args.steps):
      shift = round_index % len(cases)
      for case in cases[shift:] + cases[:shift]:
        out = owner[case].run(case, 1)
        r = results[case]
        r['times'] += out['times']
        r['loss'] = out['loss']
        r['wall_s'] += out['wall_s']
        for key in ('own_cpu_s', 'other_cpu_s'):
          r[key] = (None if r[key] is None or out[key] is None
                    else r[key] + out[key])
  finally:
    for w in workers.values():
      w.close()

  for case, r in results.items():
    info = owner[case].info
    r['parameters'] = info['parameters'][case]
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
    r['framework_info'] = {k: v for k, v in info.items() if k != 'parameters'}
  return [results[c] for c in cases]


def summarise(model, rows):
  by_case = {r['case']: r for r in rows}
  summary = dict(model=model)

  def ratio(key, a, b):
    if a in by_case and b in by_case:
      times_a, times_b = by_case[a]['times'], by_case[b]['times']
      summary[key] = by_case[a]['median_s'] / by_case[b]['median_s']
      # Step i of both cases ran in the same round, close in time: the median
      # of these ratios is less sensitive to drift in the machine's load.
      summary[key + '_paired'] = statistics.median(
          x / y for x, y in zip(times_a, times_b))

  ratio('jax_padam_over_jax_sgd', 'jax_padam', 'jax_sgd')
  ratio('jax_padam_const_over_jax_sgd_plain', 'jax_padam_const',
        'jax_sgd_plain')
  ratio('torch_padam_over_torch_sgd', 'torch_padam', 'torch_sgd')
  ratio('torch_padam_loop_over_torch_padam', 'torch_padam_loop',
        'torch_padam')
  # > 1: JAX's step takes longer than PyTorch's.
  for case in by_case:
    name = split_case(case)[0]
    if name in ('jax_padam', 'jax_sgd'):
      torch_case = name.replace('jax_', 'torch_')
      ratio(f'{case}_over_{torch_case}', case, torch_case)
  return summary


def header(args) -> str:
  return '\n'.join([
      *run_info.header_lines(
          ('torch', 'jax', 'jaxlib', 'flax', 'optax', 'numpy')),
      f'# batch {args.batch_size}, random 32x32x3 uint8 inputs, training '
      f'mode; median of {args.steps} steps per case after {args.warmup} '
      'warm-up step(s); cases interleaved one step at a time',
  ])


def fmt(value, spec):
  return '-' if value is None else format(value, spec)


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

  print(header(args), flush=True)
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
  print('| model | case | images/s | median step s | min-max s | own cores | '
        'other cores | own CPU s/step | first step s |')
  print('|---|---|---:|---:|---:|---:|---:|---:|---:|')
  for r in all_rows:
    print(f'| {r["model"]} | {r["case"]} | {r["images_per_second"]:.1f} | '
          f'{r["median_s"]:.3f} | {min(r["times"]):.3f}-{max(r["times"]):.3f}'
          f' | {fmt(r["own_cores"], ".2f")} | {fmt(r["other_cores"], ".2f")} '
          f'| {fmt(r["own_cpu_s_per_step"], ".2f")} '
          f'| {r["first_step_s"]:.2f} |')
  print()
  columns = [k for k in ('jax_padam_over_jax_sgd',
                         'jax_padam_const_over_jax_sgd_plain',
                         'torch_padam_over_torch_sgd',
                         'torch_padam_loop_over_torch_padam')
             if any(k in s for s in summaries)]
  columns += [f'{c}_over_{split_case(c)[0].replace("jax_", "torch_")}'
              for c in cases if split_case(c)[0] in ('jax_padam', 'jax_sgd')]
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
