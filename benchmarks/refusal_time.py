"""Wall time of train.py refusing bad input, before JAX is imported.

  python benchmarks/refusal_time.py [--rounds 3]

Every case of tests/refused_inputs.py's table as a fresh `python train.py`
process in a new temporary folder, `--rounds` times, cases interleaved.
"""

import argparse
import statistics
import tempfile
import time

import harness
from tests import refused_inputs  # pylint: disable=g-bad-import-order


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
  cases = refused_inputs.CASES
  harness.print_header(f'# {len(cases)} refused train.py commands, '
                       f'{args.rounds} rounds, cases interleaved; wall '
                       'seconds per process')
  times = {c.id: [] for c in cases}
  refused = {c.id: True for c in cases}
  for order in harness.rounds(cases, args.rounds):
    for case in order:
      seconds, ok = time_case(case)
      times[case.id].append(seconds)
      refused[case.id] &= ok
  print('\n'.join(harness.table(
      ('case', 'median s', 'slowest s', 'exit 2, one error line'),
      [(c.id, f'{statistics.median(times[c.id]):.2f}',
        f'{max(times[c.id]):.2f}', 'yes' if refused[c.id] else 'NO')
       for c in cases])))
  every = [s for t in times.values() for s in t]
  slowest = max(times, key=lambda k: max(times[k]))
  print(f'\nall {len(every)} runs: median {statistics.median(every):.2f} s, '
        f'slowest {max(every):.2f} s ({slowest}); refused as expected: '
        f'{sum(refused.values())}/{len(cases)} cases')


if __name__ == '__main__':
  main()
