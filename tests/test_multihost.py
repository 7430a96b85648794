"""Multi-host training: two processes on one machine act as two hosts.

Each process (tests/scripts/multihost_worker.py) joins `jax.distributed`
through a coordinator on a free localhost port (CPU backend, gloo collectives,
2 CPU devices per process), builds the global 4-device mesh with
`train_lib.make_mesh()` and `MeshSteps`, and trains tiny_cnn with Padam for 3
steps on the same global batches (built on both processes with
`MeshSteps.global_array`; each process feeds only its own devices' rows),
then evaluates with `loop.evaluate_totals`. A third process does the same on one
host with 4 devices, as a reference.
"""
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.helpers import free_port

pytestmark = pytest.mark.slow

SCRIPT = os.path.join(ROOT, 'tests', 'scripts', 'multihost_worker.py')
NUM_PROCESSES = 2
LOCAL_DEVICES = 2
TIMEOUT_S = 180  # the 3 processes take 15-35 s on 2 cores; a hang is killed
# XLA's backend optimisation and LLVM's expensive passes off (as
# tests/test_kernels.py FAST_COMPILE): halves the compile time (most of the
# test's CPU time); all processes compile with the same flags.
XLA_FLAGS = ('--xla_backend_optimization_level=0 '
             '--xla_llvm_disable_expensive_passes=true')

# Multi-host vs one host with 4 devices: the same sharded program, but the
# gradient and BatchNorm all-reduces cross processes through gloo, which sums
# in another order: float32 rounding only. Measured max |a - b|: 1.5e-8
# (params up to 0.19; 2.3e-6 of the largest value of its leaf), metrics
# identical. Tolerance as in test_data_parallel.py: 1e-5 of the element or of
# its leaf's largest value.
RTOL = 1e-5
LEAF_ATOL = 1e-5


def _env():
  env = dict(os.environ)
  env['JAX_PLATFORMS'] = 'cpu'
  # The worker sets its device count with jax_num_cpu_devices.
  flags = re.sub(r'--xla_force_host_platform_device_count=\S+', '',
                 env.get('XLA_FLAGS', ''))
  env['XLA_FLAGS'] = f'{flags} {XLA_FLAGS}'.strip()
  return env


def _run_all(commands, log_dir):
  """Runs the commands at once; kills all as soon as one fails or time is up."""
  procs, logs = [], []
  try:
    for i, command in enumerate(commands):
      log = open(os.path.join(log_dir, f'log_{i}.txt'), 'w+')
      logs.append(log)
      procs.append(subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=log,
                                    stderr=subprocess.STDOUT))
    deadline = time.monotonic() + TIMEOUT_S
    while True:
      codes = [p.poll() for p in procs]  # polls every process
      if None not in codes:
        break
      # A peer of a failed process would wait for it until its own timeout.
      if any(codes) or time.monotonic() > deadline:
        break
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
  outputs = []
  for log in logs:
    log.seek(0)
    outputs.append(log.read())
    log.close()
  failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode]
  if failed:
    details = '\n'.join(f'--- process {i} (rc {rc}) ---\n{outputs[i][-4000:]}'
                        for i, rc in failed)
    pytest.fail('worker processes failed (rc -9: killed, after another '
                f'failed or after the {TIMEOUT_S} s timeout):\n{details}')


@pytest.fixture(scope='module')
def results(tmp_path_factory):
  out = tmp_path_factory.mktemp('multihost')
  port = free_port()
  workers = [[sys.executable, SCRIPT, f'--coordinator=localhost:{port}',
              f'--num_processes={NUM_PROCESSES}', f'--process_id={i}',
              f'--local_devices={LOCAL_DEVICES}', f'--out={out / "multi"}']
             for i in range(NUM_PROCESSES)]
  reference = [sys.executable, SCRIPT, '--num_processes=1',
               f'--local_devices={NUM_PROCESSES * LOCAL_DEVICES}',
               f'--out={out / "single"}']
  _run_all(workers + [reference], str(out))

  def load(name):
    with open(out / f'{name}.json') as f:
      info = json.load(f)
    with np.load(out / f'{name}.npz') as f:
      return info, dict(f)

  return ([load(f'multi/process_{i}') for i in range(NUM_PROCESSES)],
          load('single/process_0'))


def test_processes_form_one_global_mesh(results):
  processes, _ = results
  num_devices = NUM_PROCESSES * LOCAL_DEVICES
  rows_per_device = 16 // num_devices
  for i, (info, _) in enumerate(processes):
    assert info['cpu_collectives'] in ('gloo', 'option not in this JAX')
    assert info['process_count'] == NUM_PROCESSES
    assert info['device_count'] == num_devices
    assert info['local_device_count'] == LOCAL_DEVICES
    assert info['mesh_process_indices'] == [0, 0, 1, 1]
    # Each process holds only its own devices' rows of the global batch (the
    # worker checks they are the right images).
    assert info['local_batch_rows'] == [
        [d * rows_per_device, (d + 1) * rows_per_device]
        for d in range(i * LOCAL_DEVICES, (i + 1) * LOCAL_DEVICES)]
    assert info['step'] == 3


def test_processes_end_with_identical_params(results):
  processes, _ = results
  (info0, arrays0), (info1, arrays1) = processes
  assert info0['params_sha256'] == info1['params_sha256']
  assert arrays0.keys() == arrays1.keys()
  for key in arrays0:
    np.testing.assert_array_equal(arrays0[key], arrays1[key], err_msg=key)


def test_params_changed_from_init(results):
  processes, _ = results
  info, arrays = processes[0]
  assert info['init_params_sha256'] != info['params_sha256']
  finals = [k for k in arrays if k.startswith('final/')]
  assert len(finals) == 11  # tiny_cnn's parameter leaves
  for key in finals:
    change = np.max(np.abs(arrays[key] - arrays['init/' + key[len('final/'):]]))
    assert change > 1e-5, (key, change)


def test_multihost_matches_one_host(results):
  processes, (ref_info, ref) = results
  info, arrays = processes[0]
  assert ref_info['process_count'] == 1 and ref_info['device_count'] == 4
  assert info['init_params_sha256'] == ref_info['init_params_sha256']
  assert arrays.keys() == ref.keys()
  for key, expected in ref.items():
    scale = float(np.max(np.abs(expected), initial=0.0))
    np.testing.assert_allclose(arrays[key], expected, rtol=RTOL,
                               atol=LEAF_ATOL * scale, err_msg=key)


def test_metrics_summed_over_the_global_batch(results):
  # member_values / loop.evaluate_totals read replicated sums on every process:
  # 3 training steps of 16 images, and 24 test images in 2 padded batches of 16
  # (the padding masked out).
  processes, _ = results
  for _, arrays in processes:
    assert float(arrays["train_metrics/['count']"]) == 48
    assert float(arrays["train_metrics/['finite']"]) == 3
    assert float(arrays["eval_metrics/['count']"]) == 24
    assert 0 <= float(arrays["eval_metrics/['top1_correct']"]) <= float(
        arrays["eval_metrics/['top5_correct']"]) <= 24
