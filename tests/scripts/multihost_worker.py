"""One process of a multi-process (multi-host) CPU training run.

Launched (twice, process_id 0 and 1) by tests/test_multihost.py:

  JAX_PLATFORMS=cpu python tests/scripts/multihost_worker.py \
      --coordinator=localhost:PORT --num_processes=2 --process_id=I \
      --local_devices=2 --out=DIR

Each process joins `jax.distributed` (CPU backend, gloo collectives), builds
the global mesh over every process's devices with `train_lib.make_mesh()` and
`MeshSteps`, and trains tiny_cnn with Padam (configs/quick.py) for a few steps
the way `trainer.train_and_evaluate` does: the same training images and the
same batch indices on every process, made into global arrays with
`MeshSteps.global_array`, each process feeding its own devices' shards. It
evaluates 24 images as the epoch loop does (`loop.evaluate_totals`) (batches padded to 16 and
made global with `MeshSteps.shard`). It then writes DIR/process_I.npz (its copy
of the replicated params, before and after, the summed training metrics and the
evaluation metrics) and DIR/process_I.json (a sha256 of the final
params, the device layout). `--num_processes=1` runs the same training in one
process (a reference).
"""

import argparse
import hashlib
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

GLOBAL_BATCH = 16
NUM_STEPS = 3
NUM_TRAIN = 64
COLLECTIVES_OPTION = 'jax_cpu_collectives_implementation'


def local_copy(tree):
  """This process's copy of a replicated tree, as numpy.

  Checks that every local device holds the same values.
  """
  def one(x):
    assert x.sharding.is_fully_replicated, x.sharding
    shards = [np.asarray(s.data) for s in x.addressable_shards]
    for s in shards[1:]:
      np.testing.assert_array_equal(s, shards[0])
    return shards[0]
  return jax.tree.map(one, tree)


def flatten(prefix, tree):
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {f'{prefix}/{jax.tree_util.keystr(path)}': np.asarray(leaf)
          for path, leaf in flat}


def digest(flat):
  h = hashlib.sha256()
  for key in sorted(flat):
    h.update(key.encode())
    h.update(str(flat[key].dtype).encode())
    h.update(str(flat[key].shape).encode())
    h.update(np.ascontiguousarray(flat[key]).tobytes())
  return h.hexdigest()


T0 = time.perf_counter()


def log(message):
  print(f'[{time.perf_counter() - T0:6.1f}s] {message}', file=sys.stderr,
        flush=True)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--coordinator', default='')
  parser.add_argument('--num_processes', type=int, required=True)
  parser.add_argument('--process_id', type=int, default=0)
  parser.add_argument('--local_devices', type=int, required=True)
  parser.add_argument('--out', required=True)
  args = parser.parse_args()

  jax.config.update('jax_num_cpu_devices', args.local_devices)
  if args.num_processes > 1:
    # Cross-process collectives of the CPU backend: gloo, over TCP (the
    # default since JAX 0.4.3x; set explicitly while the option exists).
    if COLLECTIVES_OPTION in jax.config.values:
      jax.config.update(COLLECTIVES_OPTION, 'gloo')
    jax.distributed.initialize(coordinator_address=args.coordinator,
                               num_processes=args.num_processes,
                               process_id=args.process_id,
                               initialization_timeout=60)

  log('initialized')
  # pylint: disable=g-import-not-at-top
  from configs import quick
  import models
  from training import input_pipeline
  from training import optimizers
  from training import train_lib
  from training import loop
  # pylint: enable=g-import-not-at-top

  assert jax.default_backend() == 'cpu', jax.default_backend()
  assert jax.process_count() == args.num_processes, jax.process_count()
  assert jax.process_index() == args.process_id, jax.process_index()
  assert jax.local_device_count() == args.local_devices, jax.local_devices()
  assert jax.device_count() == args.num_processes * args.local_devices

  config = quick.get_config()
  config.batch_size = GLOBAL_BATCH
  optimizer = optimizers.create_optimizer(config, NUM_TRAIN // GLOBAL_BATCH)
  model = models.create_model(config.model, num_classes=10)
  mesh = train_lib.make_mesh()
  steps = train_lib.MeshSteps(mesh, model, optimizer)

  # As trainer.train_and_evaluate: state created replicated on the global mesh.
  state = jax.jit(
      lambda rng: train_lib.create_train_state(rng, model, optimizer),
      out_shardings=steps.replicated)(jax.random.key(config.seed))
  init_params = local_copy(state.params)
  log('state created')

  # The same data and batch order on every process (fixed seeds).
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (NUM_TRAIN, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, (NUM_TRAIN,), dtype=np.int32)
  order = rng.permutation(NUM_TRAIN).astype(np.int32)
  train_images = steps.replicate(images)
  train_labels = steps.replicate(labels)
  totals = None
  for i in range(NUM_STEPS):
    idx = order[i * GLOBAL_BATCH:(i + 1) * GLOBAL_BATCH]
    batch = steps.gather(train_images, train_labels,
                         steps.global_array(idx, steps.sharded))
    local_rows = sorted(
        (s.index[0].start, s.index[0].stop)
        for s in batch['images'].addressable_shards)
    for s in batch['images'].addressable_shards:
      np.testing.assert_array_equal(np.asarray(s.data),
                                    images[idx][s.index[0]])
    state, metrics = steps.train_step(state, batch)
    totals = metrics if totals is None else steps.add(totals, metrics)
    log(f'step {i + 1} dispatched')

  # Evaluation as the epoch loop does: host batches made global with
  # MeshSteps.shard (global_array), metrics read with member_values.
  test = input_pipeline.Split(images=images[:24], labels=labels[:24])
  eval_metrics, = steps.member_values(jax.device_get(
      loop.evaluate_totals(steps, state, test, GLOBAL_BATCH)))
  train_metrics, = steps.member_values(jax.device_get(totals))
  log('evaluated')

  final_params = local_copy(state.params)
  arrays = {**flatten('init', init_params), **flatten('final', final_params),
            **flatten('train_metrics', train_metrics),
            **flatten('eval_metrics', eval_metrics)}
  os.makedirs(args.out, exist_ok=True)
  name = os.path.join(args.out, f'process_{args.process_id}')
  np.savez(name + '.npz', **arrays)
  with open(name + '.json', 'w') as f:
    json.dump({
        'params_sha256': digest(flatten('final', final_params)),
        'init_params_sha256': digest(flatten('init', init_params)),
        'process_count': jax.process_count(),
        'device_count': jax.device_count(),
        'local_device_count': jax.local_device_count(),
        'mesh_process_indices': [d.process_index for d in mesh.devices.flat],
        'local_batch_rows': local_rows,
        'step': int(local_copy(state.step)),
        'cpu_collectives': jax.config.values.get(COLLECTIVES_OPTION,
                                                 'option not in this JAX'),
    }, f)
  log('done')


if __name__ == '__main__':
  main()
