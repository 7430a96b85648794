"""train.py's bad inputs that are refused before JAX is imported: a table.

Each case is a command line of train.py (its arguments; `--workdir` is added
where a case gives none), an environment, and the fragments its one
`error:` line must hold. tests/test_bad_inputs.py runs each and checks the
exit status, the line, that no traceback is printed, nothing written, and
that JAX was never imported; benchmarks/refusal_time.py times them.

Not a test file: both import it.
"""

import dataclasses
import os
import re
import subprocess
import sys
from typing import Callable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_PY = os.path.join(ROOT, 'train.py')
QUICK = os.path.join(ROOT, 'configs', 'quick.py')
PAPER = os.path.join(ROOT, 'configs', 'paper.py')


@dataclasses.dataclass
class Refused:
  """A refused train.py command: `args` after train.py (`TMP` in one is
  replaced by the case's folder), `env` on top of the caller's, `setup(tmp)`
  run first, and what the error line says."""
  id: str
  args: tuple
  fragments: tuple
  env: Optional[dict] = None
  setup: Optional[Callable[[str], None]] = None


def _broken_config_file(tmp):
  with open(os.path.join(tmp, 'broken.py'), 'w') as f:
    f.write('def get_config(:\n  pass\n')


def _file_as_workdir(tmp):
  with open(os.path.join(tmp, 'W'), 'w') as f:
    f.write('a file\n')


def quick_args(*overrides):
  """configs/quick.py's arguments, then `overrides`."""
  return ('--config', QUICK, '--progress=false', *overrides)


CASES = (
    # --config.KEY=VALUE: keys and their types.
    Refused('unknown key', quick_args('--config.batch_sise=64'), (
        "--config.batch_sise='64': batch_sise is not a key of the config",
        '(did you mean batch_size?); allowed: batch_size,')),
    Refused('unknown nested key', quick_args('--config.optimizer.lr=0.1'), (
        'optimizer.lr is not a key', 'did you mean optimizer.learning_rate?',
        'allowed under optimizer: b1, b2, eps,')),
    Refused('int of wrong type', quick_args('--config.batch_size=abc'), (
        "--config.batch_size='abc' is not allowed (invalid literal for int() "
        "with base 10: 'abc'); allowed: an integer, as in the config "
        '(batch_size=128).',)),
    Refused('number of wrong type',
            quick_args('--config.optimizer.learning_rate=fast'), (
                "--config.optimizer.learning_rate='fast' is not allowed",
                'allowed: a number, as in the config '
                '(optimizer.learning_rate=0.1)')),
    Refused('a group of keys given a value',
            quick_args('--config.optimizer=foo'), (
                "--config.optimizer='foo' is not allowed: optimizer is a "
                'group of keys, not a value; allowed: '
                '--config.optimizer.KEY=VALUE, KEY one of b1, b2, eps, '
                'formulation, learning_rate,',)),
    # Values: ranges and names.
    Refused('negative batch size', quick_args('--config.batch_size=-3'), (
        'batch_size=-3 is not allowed; allowed: an integer >= 1.',)),
    Refused('p out of range', quick_args('--config.optimizer.p=0.75'), (
        'optimizer (padam):',
        'p=0.75 is out of range; allowed: 0 <= p <= 0.5')),
    Refused('p just out of range', quick_args('--config.optimizer.p=0.7'), (
        'optimizer (padam): p=0.7 is out of range; allowed: 0 <= p <= 0.5.',
    )),
    Refused('negative learning rate',
            quick_args('--config.optimizer.learning_rate=-0.1'), (
                'optimizer (padam): learning_rate=-0.1 is out of range; '
                'allowed: learning_rate >= 0.',)),
    Refused('b2 of 1', quick_args('--config.optimizer.b2=1.0'), (
        'optimizer (padam): b2=1.0 is out of range; allowed: 0 <= b2 < 1.',)),
    Refused('infinite eps', quick_args('--config.optimizer.eps=inf'), (
        'optimizer (padam): eps=inf is out of range; allowed: eps >= 0, '
        'finite.',)),
    Refused('momentum of SGD out of range', (
        '--config', f'{PAPER}:resnet18,cifar10,sgdm', '--progress=false',
        '--config.optimizer.momentum=1.5'), (
            'optimizer (sgdm): momentum=1.5 is out of range; allowed: 0 <= '
            'momentum < 1.',)),
    Refused('unknown model', quick_args('--config.model=resnet1000'), (
        "model='resnet1000' is not known; allowed: vgg16, resnet18, wrn16_4, "
        'tiny_cnn.',)),
    Refused('unknown dataset', quick_args('--config.dataset=mnist'), (
        "dataset='mnist' is not known; allowed: cifar10, cifar100.",)),
    Refused('unknown data source', quick_args('--config.data_source=gcs'), (
        "data_source='gcs' is not known; allowed: download, local, tfds",)),
    Refused('unknown dtype', quick_args('--config.dtype=float16'), (
        "dtype='float16' is not known; allowed: float32, bfloat16.",)),
    Refused('unknown optimizer', quick_args('--config.optimizer.name=sgd'), (
        "optimizer.name='sgd' is not known; allowed: sgdm, adam, amsgrad, "
        'adamw, padam, lion.',)),
    Refused('unknown formulation',
            quick_args('--config.optimizer.formulation=pytorch'), (
                "optimizer.formulation='pytorch' is not known; allowed: "
                'authors, paper, report.',)),
    Refused('milestone not an epoch',
            quick_args('--config.optimizer.lr_milestones=(0,3)'), (
                'optimizer.lr_milestones=(0, 3) is not allowed (0); allowed: '
                'epochs, integers >= 1',)),
    Refused('lr factor above 1', quick_args('--config.optimizer.lr_factor=2'), (
        'optimizer.lr_factor=2.0 is out of range; allowed: 0 <= '
        'optimizer.lr_factor <= 1.',)),
    Refused('no epochs', quick_args('--config.num_epochs=0'), (
        'num_epochs=0 is not allowed; allowed: an integer >= 1.',)),
    Refused('negative seed', quick_args('--config.seed=-1'), (
        'seed=-1 is not allowed; allowed: an integer >= 0.',)),
    Refused('no CPU devices', quick_args('--config.cpu_devices=0'), (
        'cpu_devices=0 is not allowed; allowed: an integer >= 1.',)),
    Refused('unknown nonfinite policy',
            quick_args('--config.nonfinite_policy=ignore'), (
                "nonfinite_policy='ignore' is not known; allowed: stop, "
                'skip.',)),
    # Config files.
    Refused('config file missing', (
        '--config', '/nonexistent/config.py'), (
            '--config=/nonexistent/config.py does not load: [Errno 2] No '
            'such file or directory',)),
    Refused('config argument', ('--config', f'{PAPER}:resnet18'), (
        "paper.py:resnet18 does not load: config argument 'resnet18' is not "
        "allowed; allowed: 'model,dataset,optimizer[,milestones]'",)),
    Refused('config argument names no optimizer', (
        '--config', f'{PAPER}:resnet18,cifar10,sgd'), (
            "does not load: optimizer='sgd' is not known; allowed: sgdm, "
            'adam, amsgrad, adamw, padam, lion.',)),
    Refused('config file with a syntax error', ('--config', 'TMP/broken.py'), (
        'broken.py does not load: invalid syntax (broken.py, line 1)',),
            setup=_broken_config_file),
    # Flags and arguments.
    Refused('unknown flag', quick_args('--num_epochs=3'), (
        "Unknown command line flag 'num_epochs'",)),
    Refused('flag below its bound', quick_args('--profile_steps=0'), (
        'flag --profile_steps=0: 0 is not a positive integer',)),
    Refused('positional argument', quick_args('extra'), (
        "unexpected arguments ['extra']; allowed: flags only",)),
    Refused('empty workdir', quick_args('--workdir='), (
        "workdir='' is empty (an unset shell variable?)",)),
    Refused('workdir is a file', quick_args(), (
        'exists and is not a directory; allowed: a directory',),
            setup=_file_as_workdir),
    # The environment.
    Refused('unknown allocator', quick_args(), (
        "PADAX_ALLOCATOR='jemalloc' is not allowed; allowed: mimalloc, "
        'system.',),
            env={'PADAX_ALLOCATOR': 'jemalloc'}),
    Refused('CPU device count not a number', quick_args(), (
        "JAX_NUM_CPU_DEVICES='abc' is not allowed; allowed: an integer >= 1",),
            env={'JAX_NUM_CPU_DEVICES': 'abc'}),
)

# The top-level packages a refused run must not import.
JAX_PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax', 'padax')
_IMPORT_LINE = re.compile(
    r'^import time:\s+\d+\s+\|\s+\d+\s+\|\s*([\w.]+)\s*$')


def command(case: Refused, tmp: str) -> list:
  """The case's argv (interpreter first), with its workdir in `tmp`."""
  args = [a.replace('TMP', tmp) for a in case.args]
  if not any(a.startswith('--workdir') for a in args):
    args.append(f'--workdir={os.path.join(tmp, "W")}')
  return [sys.executable, TRAIN_PY, *args]


def run(case: Refused, tmp: str, *, trace_imports: bool = False,
        timeout: float = 60) -> subprocess.CompletedProcess:
  """Runs the case (its setup first) in `tmp`. trace_imports: Python lists
  each module it imports on stderr (`imported_packages` reads them); the
  variable, unlike -X importtime, survives train.py's restart under
  mimalloc."""
  env = {**os.environ, **(case.env or {})}
  if trace_imports:
    env['PYTHONPROFILEIMPORTTIME'] = '1'
  return subprocess.run(command(case, tmp), cwd=tmp, env=env,
                        capture_output=True, text=True, timeout=timeout,
                        check=False)


def imported_packages(stderr: str) -> set:
  """The top-level packages a `trace_imports` run imported."""
  return {m.group(1).split('.')[0] for m in map(_IMPORT_LINE.match,
                                                stderr.splitlines()) if m}


def error_lines(stderr: str) -> list:
  return [l for l in stderr.splitlines() if l.startswith('error:')]
