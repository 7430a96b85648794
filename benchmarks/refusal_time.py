"""Wall time of train.py refusing bad input, before JAX is imported.

  python benchmarks/refusal_time.py [--rounds 3]

Runs every case of tests/refused_inputs.py's table (the bad config keys,
values, config files, flags and environment variables that
tests/test_bad_inputs.py checks) as a fresh `python train.py` process, in
a new temporary folder each, `--rounds` times, the cases interleaved. Prints
each case's median wall time (process start to exit, as a user waits for
it) and, over all runs, the median and the slowest, and whether each run
exited 2 with one `error:` line.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import run_info
from tests import refused_inputs
# pylint: enable=g-import-not-at-top,wrong-import-position


def time_case(case: refused_inputs.Refused) -> tuple:
  """(seconds, refused as expected) of one run of `case`."""
  with tempfile.TemporaryDirectory() as tmp:
    if case.setup is not None:
      case.setup(tmp)
    t0 = time.perf_counter()
    result = refused_inputs.run(case, tmp)
    seconds = time.perf_counter() - t0
  errors = refused_inputs.error_lines(result.stderr)
  return seconds, (result.returncode == 2 and len(errors) == 1 and
                   all(f in errors[0] for f in case.fragments))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rounds', type=int, default=3)
  args = parser.parse_args()
  print('\n'.join(run_info.header_lines()))
  cases = refused_inputs.CASES
  print(f'# {len(cases)} refused train.py commands, {args.rounds} rounds, '
        'cases interleaved; wall seconds per process')
  times = {c.id: [] for c in cases}
  refused = {c.id: True for c in cases}
  for _ in range(args.rounds):
    for case in cases:
      seconds, ok = time_case(case)
      times[case.id].append(seconds)
      refused[case.id] &= ok
  print('| case | median s | slowest s | exit 2, one error line |')
  print('|---|---:|---:|---|')
  for case in cases:
    t = times[case.id]
    print(f'| {case.id} | {statistics.median(t):.2f} | {max(t):.2f} | '
          f'{"yes" if refused[case.id] else "NO"} |')
  every = [s for t in times.values() for s in t]
  slowest = max(times, key=lambda k: max(times[k]))
  print(f'\nall {len(every)} runs: median {statistics.median(every):.2f} s, '
        f'slowest {max(every):.2f} s ({slowest}); refused as expected: '
        f'{sum(refused.values())}/{len(cases)} cases')


if __name__ == '__main__':
  main()
