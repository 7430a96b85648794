"""Images/s of a K-member vmapped sweep grid against the same K members one
after another.

  python benchmarks/sweep_throughput.py [--models tiny_cnn,resnet18]
      [--batch-sizes tiny_cnn=128,resnet18=32] [--members 9] [--steps 2]
      [--repeats 3] [--virtual-devices 36] [--skip " 1 device"]

One fresh process per model with `--virtual-devices` simulated CPU devices
(real ones on a GPU machine); the variants, interleaved `--repeats` times:
train.py's step (`MeshSteps`) member after member on 1 device and data
parallel over up to 4, and the sweep's `GridSteps` on 1 device, on K
(one member each) and on K x D (sweep.py's CPU layout). Images/s counts
every member's images; `cores busy` is the process's CPU time over the
wall time of the variant's timed runs.
"""

import argparse
import functools
import json
import sys
import time

import harness
import subprocess_case
import train_step

DEFAULT_BATCH = {'tiny_cnn': 128, 'resnet18': 32}


def _grid_config(members: int):
  """The Padam config and its first `members` (p, lr) members, seed k."""
  from configs import default  # pylint: disable=g-import-not-at-top
  from sweeps import spec  # pylint: disable=g-import-not-at-top
  config = default.set_optimizer(default.get_config(), 'padam')
  config.optimizer.lr_milestones = ()
  grid = [(p, lr) for lr in (0.1, 0.01, 0.001, 0.0001)
          for p in (0.25, 0.125, 0.0625)][:members]
  return config, [spec.Member(k, f'p={p},lr={lr}',
                              dict(seed=k, p=p, learning_rate=lr))
                  for k, (p, lr) in enumerate(grid)]


def measure(model_name: str, batch_size: int, members: int, steps: int,
            repeats: int, skip: tuple = ()) -> dict:
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from sweeps import grid as grid_lib
  from training import host_devices, train_lib
  # pylint: enable=g-import-not-at-top

  config, grid = _grid_config(members)
  model, optimizer, _ = train_step.make_steps(model_name, config,
                                              jax.devices()[:1])
  host_batch = train_step.random_batch(np.random.default_rng(0), batch_size)

  def init(key):
    return train_lib.create_train_state(key, model, optimizer)

  def sequential_variant(devices):
    """train.py's step (data parallel over `devices`), one state per member."""
    steps_fns = train_lib.MeshSteps(train_lib.make_mesh(devices), model,
                                    optimizer)
    # Hyperparameters set inside the jit, so that the state's types are
    # those the step returns: one compiled step for every call.
    member_init = jax.jit(
        lambda key, v: grid_lib.set_hyperparameters(init(key), v),
        out_shardings=steps_fns.replicated)
    states = [member_init(jax.random.key(m.seed), {
        k: v for k, v in m.values.items() if k != 'seed'}) for m in grid]
    return steps_fns, states, steps_fns.shard(host_batch)

  def grid_variant(devices, data=1):
    """The sweep's step, all members in one stacked state (a list of one)."""
    mesh = grid_lib.make_grid_mesh(devices, data)
    # Padded as sweeps pad (the last member repeated).
    steps_fns = grid_lib.GridSteps(mesh, model, optimizer).for_members(grid)
    state = grid_lib.init_grid(jax.jit(
        lambda keys, v: grid_lib.set_hyperparameters(jax.vmap(init)(keys), v),
        out_shardings=steps_fns.state_sharding), steps_fns.padded_members)
    return steps_fns, [state], jax.tree.map(
        lambda x: steps_fns.global_array(x, steps_fns.sharded), host_batch)

  # Built lazily: a skipped variant costs neither compile time nor memory.
  builders = {'sequential, 1 device':
              lambda: sequential_variant(jax.devices()[:1])}
  # train.py on the same virtual devices, data parallel (the batch must split).
  split = host_devices.largest_divisor(min(jax.device_count(), 4),
                                       batch_size)
  if split > 1:
    builders[f'sequential, {split} devices'] = lambda: sequential_variant(
        jax.devices()[:split])
  builders['vmapped, 1 device'] = lambda: grid_variant(jax.devices()[:1])
  if jax.device_count() >= members:
    builders[f'vmapped, {members} devices (one member each)'] = (
        lambda: grid_variant(jax.devices()[:members]))
  # sweep.py's CPU default: each member data parallel over its own devices.
  data = host_devices.largest_divisor(jax.device_count() // members,
                                      batch_size)
  if data > 1:
    builders[f'vmapped, {members}x{data} devices (grid x data)'] = (
        lambda: grid_variant(jax.devices()[:members * data], data))
  variants = {n: build() for n, build in builders.items()
              if n == 'sequential, 1 device' or not any(k in n for k in skip)}

  def run(name):
    """`steps` steps of every state of the variant, one after another."""
    steps_fns, states, batch = variants[name]
    for k, state in enumerate(states):
      for _ in range(steps):
        state, metrics = steps_fns.train_step(state, batch)
      states[k] = state
    jax.block_until_ready((states, metrics))

  runs = {name: functools.partial(run, name) for name in variants}
  compile_s = {}
  for name, run in runs.items():  # Compile and warm up.
    t0 = time.perf_counter()
    run()
    compile_s[name] = time.perf_counter() - t0
  # A program compiled inside the timed runs would be timed as training.
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, _, **kw: compiles.append(event)
      if event == '/jax/core/compile/backend_compile_duration' else None)
  tallies = {name: harness.Tally() for name in runs}
  for order in harness.rounds(runs, repeats):
    for name in order:
      with harness.CpuMeter() as meter:
        runs[name]()
      tallies[name].add(meter.wall_s, meter.wall_s, meter.own_cpu_s, None)
  if compiles:
    raise RuntimeError(f'{len(compiles)} XLA compilation(s) during the timed '
                       'runs: the warm-up did not compile everything')
  images = members * batch_size * steps
  summaries = {name: t.summary() for name, t in tallies.items()}
  return dict(model=model_name, batch_size=batch_size, members=members,
              steps=steps, repeats=repeats, devices=jax.device_count(),
              device_kind=jax.devices()[0].device_kind,
              images_per_second={n: images / r['median_s']
                                 for n, r in summaries.items()},
              cores_busy={n: r['own_cores'] for n, r in summaries.items()},
              first_run_s=compile_s)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='tiny_cnn,resnet18')
  parser.add_argument('--batch-sizes', default='',
                      help='model=batch,... (default tiny_cnn=128, '
                      'resnet18=32, others 128): per member')
  parser.add_argument('--members', type=int, default=9)
  parser.add_argument('--steps', type=int, default=2)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--skip', default='',
                      help='comma-separated parts of variant names to leave '
                      'out (e.g. " 1 device" to skip the slow vmapped grid on '
                      'one device); the 1-device sequential baseline stays')
  parser.add_argument('--virtual-devices', type=int, default=36,
                      help='simulated CPU devices (ignored on a GPU)')
  args = parser.parse_args()
  batch = dict(DEFAULT_BATCH)
  for item in filter(None, args.batch_sizes.split(',')):
    name, value = item.split('=')
    batch[name] = int(value)
  harness.print_header(
      f'# {args.members} members (Padam, p x lr), {args.steps} steps per '
      f'member, median of {args.repeats} interleaved repeats')

  def rows():
    for name in args.models.split(','):
      r = subprocess_case.run(measure, dict(
          model_name=name, batch_size=batch.get(name, 128),
          members=args.members, steps=args.steps, repeats=args.repeats,
          skip=list(filter(None, args.skip.split(',')))),
          devices=args.virtual_devices if args.virtual_devices > 1 else None)
      print(json.dumps(r), file=sys.stderr)
      ips = r['images_per_second']
      for variant, value in ips.items():
        yield (f'{name} ({r["device_kind"]})', r['batch_size'], variant,
               f'{value:.1f}', f'{value / ips["sequential, 1 device"]:.2f}x',
               harness.fmt(r['cores_busy'][variant]))

  harness.print_table(('model', 'batch per member', 'variant', 'images/s',
                       'vs sequential, 1 device', 'cores busy'), rows())


if __name__ == '__main__':
  # sweep.py's set-up (it restarts itself under mimalloc the same way).
  harness.use_train_py_setup()
  main()
