"""Where the time of a profiled run went, from its JAX profiler trace.

  python train.py ... --profile [--profile_steps=5]     # writes WORKDIR/profile
  python benchmarks/trace_summary.py WORKDIR/profile [--top 15]

Reads the newest `*.xplane.pb` under the folder and sums, over XLA's CPU
threads (the intra-op Eigen pool and the PjRt client threads), the time of
each compiled operation (thunk): convolutions, fusions, reduce-windows, ...
Nested events (executor regions, thread-pool bookkeeping) are left out, so
the sum is CPU time spent in operations, which can exceed wall time when
several threads run at once. On a GPU trace the device planes are used.
"""

import argparse
import collections
import glob
import os
import re

import jax

# Operation names (with XLA's `.N` suffix removed) -> a coarse kind.
KINDS = (
    # XLA:CPU runs convolutions, with the element-wise ops around them, as
    # YNNPACK fusions (`ynn_fusion`), or as oneDNN/XNNPACK calls.
    ('convolution (with fused element-wise ops)',
     r'conv|convolution|onednn|xnn|ynn'),
    ('max pool (reduce-window, select-and-scatter)',
     r'reduce-window|reduce_window|select-and-scatter|select_and_scatter'),
    ('matmul (dot: BatchNorm channel sums, dense layer)', r'^dot|_dot|dot_'),
    ('collectives', r'all-reduce|all_reduce|all-gather|reduce-scatter|'
                    r'collective|all-to-all'),
    ('reduction fusions (BatchNorm statistics, loss, gradient sums)',
     r'reduce'),
    # Not 'bitcast': a bitcast is a free reshape, and fusions named after
    # one are element-wise.
    ('transposes and copies', r'transpose|copy'),
    ('other fusions (element-wise: BatchNorm apply, ReLU, optimizer)',
     r'fusion'),
)


def kind(name: str) -> str:
  for label, pattern in KINDS:
    if re.search(pattern, name):
      return label
  return 'other'


def _is_operation(name: str) -> bool:
  # Executor and thread-pool events wrap the operations; Python and PjRt
  # API events ('$...', 'Class::Method') are host bookkeeping.
  return not (name.startswith('$') or '::' in name or ' ' in name or
              name.startswith('PjitFunction'))


def newest_trace(folder: str) -> str:
  found = glob.glob(os.path.join(folder, '**', '*.xplane.pb'), recursive=True)
  if not found:
    raise SystemExit(f'no *.xplane.pb under {folder}: run with --profile')
  return max(found, key=os.path.getmtime)


def operation_times(path: str):
  """({operation name without .N: total ns} over the compute threads, ns
  from the first operation's start to the last one's end)."""
  data = jax.profiler.ProfileData.from_file(path)
  planes = [p for p in data.planes if p.name.startswith('/device:')]
  if not planes:
    planes = [p for p in data.planes if p.name == '/host:CPU']
  times = collections.Counter()
  first, last = float('inf'), 0.0
  for plane in planes:
    for line in plane.lines:
      if plane.name == '/host:CPU' and not line.name.startswith('tf_XLA'):
        continue
      for event in line.events:
        if _is_operation(event.name):
          times[re.sub(r'\.\d+$', '', event.name)] += event.duration_ns
          first = min(first, event.start_ns)
          last = max(last, event.end_ns)
  return times, max(0.0, last - first)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('folder', help='a --profile folder (WORKDIR/profile)')
  parser.add_argument('--top', type=int, default=15)
  parser.add_argument('--cores', type=int, default=os.cpu_count(),
                      help='cores of the traced machine (default: this '
                      "machine's), for the time no named operation took")
  args = parser.parse_args()
  path = newest_trace(args.folder)
  times, span = operation_times(path)
  total = sum(times.values())
  by_kind = collections.Counter()
  for name, ns in times.items():
    by_kind[kind(name)] += ns
  print(f'# {path}: {total / 1e9:.2f} s of operation time (summed over '
        f'threads) in {span / 1e9:.2f} s from the first operation to the last')
  print('| kind | seconds | share |')
  print('|---|---:|---:|')
  for label, ns in by_kind.most_common():
    print(f'| {label} | {ns / 1e9:.2f} | {100 * ns / total:.1f}% |')
  # XLA:CPU's thunk profiler names fusions, dots and reduce-windows, but not
  # the Eigen convolutions that run with YNNPACK off (CPU_XLA_FLAGS): their
  # time shows only as the cores' time that no named operation took.
  available = span * args.cores
  print(f'\n{args.cores} cores x {span / 1e9:.2f} s = '
        f'{available / 1e9:.2f} core-s; named operations took '
        f'{100 * total / available:.1f}% of them, the rest '
        f'({(available - total) / 1e9:.2f} core-s) went to operations the '
        'trace does not name (most convolutions under CPU_XLA_FLAGS) and to '
        'idle cores')
  print()
  print('| operation | seconds | share | kind |')
  print('|---|---:|---:|---|')
  for name, ns in times.most_common(args.top):
    print(f'| `{name}` | {ns / 1e9:.3f} | {100 * ns / total:.1f}% | '
          f'{kind(name)} |')


if __name__ == '__main__':
  main()
