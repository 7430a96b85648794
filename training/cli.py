"""What train.py and sweep.py share around their main function: flag
parsing where a bad command line is ONE line `error: ...` with exit status 2
(absl would print a FATAL message or a traceback), the set-up before JAX
starts, quiet library logs (one line per epoch stays readable), and the exit
status of each fault of a run (training/faults.py).
"""

import logging as std_logging
import os
import re
import shlex
import sys
import traceback

from absl import flags
from absl import logging

from training import faults
from training import rundir

CONFIG_FLAG = 'config'

# Flags of both entry points.
PROFILE = flags.DEFINE_bool(
    'profile', False, 'Write a JAX profiler trace of --profile_steps '
    'training steps (after 5 warm-up steps) to WORKDIR/profile.')
PROFILE_STEPS = flags.DEFINE_integer(
    'profile_steps', 5, 'Steps in the --profile trace.', lower_bound=1)
COMPILATION_CACHE = flags.DEFINE_string(
    'compilation_cache_dir', None, "JAX's persistent compilation cache, "
    'reused by the next run of the same programs. Default: '
    '$JAX_COMPILATION_CACHE_DIR if set, else $XDG_CACHE_HOME/padax/jax '
    '(~/.cache/padax/jax); "" turns it off.')


def fail(message: str, status: int = faults.EXIT_REFUSED):
  sys.stderr.write(f'error: {message}\n')
  sys.exit(status)


def _config_overrides(argv) -> list:
  """(key, value text or None) of each --config.KEY[=VALUE] in argv."""
  out = []
  for i, arg in enumerate(argv):
    m = re.match(rf'^--?(no)?{CONFIG_FLAG}\.([^=]+)(=(.*))?$', arg, re.S)
    if m:
      value = m.group(4)
      if value is None and not m.group(1) and i + 1 < len(argv):
        value = argv[i + 1]
      out.append((m.group(2), value))
  return out


def _config_spec(argv):
  for i, arg in enumerate(argv):
    m = re.match(rf'^--?{CONFIG_FLAG}(=(.*))?$', arg, re.S)
    if m:
      return m.group(2) if m.group(1) else (
          argv[i + 1] if i + 1 < len(argv) else None)
  return None


def _does_not_load(spec: str, e: BaseException) -> str:
  if isinstance(e, SystemExit):
    reason = (f'the config file called sys.exit({e.code!r}); allowed: a '
              'config file whose get_config() returns a ConfigDict.')
  else:
    # config_flags puts the config file's traceback or its search in the
    # message: the last line is the error.
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    reason = re.sub(r'^\w*(Error|Exception): ', '',
                    lines[-1] if lines else '')
  return f'--{CONFIG_FLAG}={spec} does not load: {reason}'


def _explain(argv, error: Exception) -> str:
  """One line on what is wrong with the command line."""
  from training import configuration  # pylint: disable=g-import-not-at-top
  from training import records  # pylint: disable=g-import-not-at-top
  spec = _config_spec(argv)
  if spec is None:
    return faults.first_line(error)
  try:
    config = flags.FLAGS[CONFIG_FLAG].parser.parse(spec)
    config.keys()  # A file that did not load raises only when used.
  except Exception as e:  # pylint: disable=broad-except
    return _does_not_load(spec, e)
  keys = records.flatten(config, nodes=True)
  for key, value in _config_overrides(argv):
    if key not in keys:
      return (f'--{CONFIG_FLAG}.{key}={value!r}: {key} is not a key of the '
              f'config {spec}{configuration.not_a_key(key, keys)}')
  m = re.search(rf'flag --{CONFIG_FLAG}\.([^=\s]+)=(.*?): (.*)',
                faults.first_line(error))
  if m and m.group(1) in keys and hasattr(keys[m.group(1)], 'items'):
    key = m.group(1)
    return (f'--{CONFIG_FLAG}.{key}={m.group(2)!r} is not allowed: {key} is '
            'a group of keys, not a value; allowed: '
            f'--{CONFIG_FLAG}.{key}.KEY=VALUE, KEY one of '
            f'{", ".join(keys[key])}.')
  if m and m.group(1) in keys:
    key = m.group(1)
    words, _ = configuration.value_kind(keys[key])
    return (f'--{CONFIG_FLAG}.{key}={m.group(2)!r} is not allowed '
            f'({m.group(3)}); allowed: {words}, as in the config '
            f'({key}={keys[key]!r}).')
  return faults.first_line(error)


_HELP = ('-h', '-?', '-help', '--help', '-helpshort', '--helpshort')
_HELP_FULL = ('-helpfull', '--helpfull')

CONFIG_OVERRIDES_HELP = f'''\
  --{CONFIG_FLAG}.KEY=VALUE: sets any key of the config (training/configuration.py
    lists every key and its meaning), e.g. --{CONFIG_FLAG}.seed=1,
    --{CONFIG_FLAG}.optimizer.p=0.0625, --{CONFIG_FLAG}.num_epochs=10; data from a
    local copy: --{CONFIG_FLAG}.data_source=local --{CONFIG_FLAG}.data_dir=DIR.'''


def _print_help(full: bool) -> None:
  doc = (sys.modules['__main__'].__doc__ or '').strip('\n')
  listing = flags.FLAGS.get_help() if full else flags.FLAGS.main_module_help()
  more = ('' if full else
          '\n\n--helpfull also lists the flags of JAX, absl and the libraries.')
  sys.stdout.write(f'{doc}\n\nFlags:\n{listing}\n{CONFIG_OVERRIDES_HELP}'
                   f'{more}\n')


def parse_flags(argv):
  """absl's parsing of `argv` (for `app.run(flags_parser=...)`); a bad command
  line (an unknown flag or `--config.` key, a value of the wrong type, a
  config file that does not load) exits 2 with one line naming the flag, the
  value and what is allowed. `--help` prints the entry point's docstring and
  its flags, and exits 0 (absl: 1)."""
  if any(arg in _HELP + _HELP_FULL for arg in argv[1:]):
    _print_help(full=any(arg in _HELP_FULL for arg in argv[1:]))
    sys.exit(0)
  try:
    remaining = flags.FLAGS(argv)
  except SystemExit as e:  # --help, or the config file's own sys.exit.
    spec = _config_spec(argv)
    if spec and any(os.path.realpath(frame.filename) ==
                    os.path.realpath(spec.split(':', 1)[0])
                    for frame in traceback.extract_tb(e.__traceback__)):
      fail(_does_not_load(spec, e))
    raise
  except Exception as e:  # pylint: disable=broad-except
    # absl raises flags.Error, config_flags also AttributeError, KeyError,
    # TypeError, or the config file's own exceptions.
    fail(_explain(argv, e))
  try:
    flags.FLAGS[CONFIG_FLAG].value.keys()
  except (SystemExit, Exception) as e:  # pylint: disable=broad-except
    fail(_does_not_load(_config_spec(argv), e))
  return remaining


def check_environment(environ=os.environ) -> None:
  """Refuses (exit 2) what JAX would otherwise fail on with a traceback
  when it is imported: JAX_NUM_CPU_DEVICES not an integer >= 1."""
  count = environ.get('JAX_NUM_CPU_DEVICES')
  if count is not None:
    try:
      ok = int(count) >= 1
    except ValueError:
      ok = False
    if not ok:
      fail(f'JAX_NUM_CPU_DEVICES={count!r} is not allowed; allowed: an '
           'integer >= 1 (CPU devices), or unset.')


def refuse_before_jax(argv, config, workdir: str, *,
                      flags_only: str) -> None:
  """Exits 2 with one line on a bad command line, config, workdir path or
  environment: what can be checked without devices, checked before JAX is
  imported (a refused run then costs no JAX start-up). flags_only: the
  flags to name when `argv` holds positional arguments."""
  # pylint: disable=g-import-not-at-top
  from training import allocator
  from training import configuration
  from training import paths
  # pylint: enable=g-import-not-at-top
  if len(argv) > 1:
    fail(f'unexpected arguments {argv[1:]}; allowed: flags only '
         f'({flags_only}, --config.KEY=VALUE, ...).')
  try:
    configuration.validate(config)
    paths.check_output_dir(workdir)
    allocator.mimalloc_environment(os.environ)
  except ValueError as e:
    fail(str(e))
  check_environment()


def start_backend() -> None:
  """Starts JAX's backend; one that cannot start (JAX_PLATFORMS naming a
  platform this host lacks) exits 2 with JAX's reason in one line."""
  import jax  # pylint: disable=g-import-not-at-top
  try:
    jax.devices()
  except RuntimeError as e:
    platforms = os.environ.get('JAX_PLATFORMS')
    reason = re.sub(r'\s*\(set JAX_PLATFORMS=.*\)\s*$', '',
                    faults.first_line(e))
    if platforms:
      fail(f'JAX_PLATFORMS={platforms!r} is not allowed on this host '
           f'({reason}); allowed: platforms it has (e.g. cpu), or unset '
           '(JAX picks one).')
    fail(f'JAX could not start a backend ({reason}); allowed: JAX_PLATFORMS '
         'naming a platform this host has (e.g. cpu).')


def profile_steps() -> int:
  """Steps to trace: 0 without --profile."""
  return PROFILE_STEPS.value if PROFILE.value else 0


def use_fast_allocator() -> None:
  """train.py's and sweep.py's first call: restarts them under mimalloc on a
  Linux CPU host (training.allocator); a bad PADAX_ALLOCATOR is refused."""
  from training import allocator  # pylint: disable=g-import-not-at-top
  try:
    allocator.use_mimalloc()
  except ValueError as e:
    fail(str(e))


class _QuietLibraries(std_logging.Filter):
  """Drops Orbax's INFO lines and the tracebacks of its warnings/errors."""

  def filter(self, record):
    if (record.levelno < std_logging.WARNING and
        record.name.startswith('jax') and
        str(record.msg).startswith("Unable to initialize backend 'tpu'")):
      # JAX probing for a TPU on every host (Failed to open libtpu.so).
      return False
    if record.name == 'asyncio' and 'never retrieved' in str(record.msg):
      # The futures of a failed Orbax save, collected at exit: padax has
      # reported the failure.
      return False
    if f'{os.sep}orbax{os.sep}' not in record.pathname:
      return True
    # The standard library's level numbers (absl's WARNING is -1).
    if record.levelno < std_logging.WARNING:
      return False
    record.exc_info = record.exc_text = None
    record.msg = faults.first_line(Exception(record.getMessage()))
    record.args = ()
    return True


def _unraisable_to_log(unraisable) -> None:
  # Orbax's asyncio callbacks, after a failed save, report "Event loop is
  # closed" this way, with a traceback: one log line is enough.
  logging.warning('Ignored in %s: %s', getattr(unraisable, 'object', None),
                  faults.first_line(unraisable.exc_value))


def prepare_jax() -> None:
  """Before JAX starts a backend: quiet library logs (one line per epoch
  stays readable), training.host_devices' XLA:CPU flags (XLA reads XLA_FLAGS
  at its start) and JAX's persistent compilation cache, from which a resumed
  run, the next run of the same config (other lr, p or seed included) or a
  sweep's next chunk loads every program. A cache the user configured
  (flag, or JAX_COMPILATION_CACHE_DIR) wins."""
  # ABSLHandler.handle() skips its own filters: filter its python handler.
  for handler in std_logging.root.handlers + [
      logging.get_absl_handler().python_handler]:
    handler.addFilter(_QuietLibraries())
  sys.unraisablehook = _unraisable_to_log
  # pylint: disable=g-import-not-at-top
  from training import host_devices
  host_devices.set_cpu_xla_flags()
  import jax
  path = COMPILATION_CACHE.value
  # A cache set through JAX_COMPILATION_CACHE_DIR or jax.config stays.
  if path is None and not jax.config.jax_compilation_cache_dir:
    path = os.path.join(os.environ.get('XDG_CACHE_HOME') or os.path.join(
        os.path.expanduser('~'), '.cache'), 'padax', 'jax')
  if path:
    jax.config.update('jax_compilation_cache_dir', path)
  if not os.environ.get('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'):
    # Every program, the small ones too (JAX's default keeps only those that
    # took 1 s): the next run, of the same config or of other hyperparameter
    # values, compiles nothing.
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)


def print_results(workdir: str, *, sweep: bool = False) -> None:
  """The last line of a finished run: where its metrics, checkpoints (and a
  sweep's summary) are, and the command that draws its figures."""
  join = os.path.join
  metrics = (join(workdir, rundir.MEMBERS_DIR, '<member>', rundir.METRICS_CSV)
             if sweep else join(workdir, rundir.METRICS_CSV))
  where = f'metrics in {metrics} (and .jsonl), '
  if sweep:
    where += (f'the grid in {join(workdir, rundir.SUMMARY_MD)} (and .json), ')
  where += f'checkpoints in {join(workdir, rundir.CHECKPOINTS_DIR)}'
  command = (f'python report.py {shlex.quote(workdir)} --out '
             f'{shlex.quote(join(workdir, "report"))}')
  sys.stderr.flush()
  print(f'Done: {where}; figures and tables: {command}', flush=True)


# The variables a launcher without a cluster manager JAX detects (SLURM,
# Open MPI, TPU pods) sets on every process; JAX itself reads only
# JAX_COORDINATOR_ADDRESS.
PROCESS_VARIABLES = {'JAX_NUM_PROCESSES': 'num_processes',
                     'JAX_PROCESS_ID': 'process_id'}


def join_processes(environ=os.environ) -> None:
  """jax.distributed.initialize(), with JAX_NUM_PROCESSES and JAX_PROCESS_ID
  where set (ValueError for one that is not a whole number)."""
  import jax  # pylint: disable=g-import-not-at-top
  arguments = {}
  for name, argument in PROCESS_VARIABLES.items():
    value = environ.get(name)
    if value is not None:
      if not value.strip().isdigit():
        raise ValueError(f'{name}={value!r} is not allowed; allowed: a whole '
                         'number (processes >= 1, 0 <= process id < '
                         'processes).')
      arguments[argument] = int(value)
  jax.distributed.initialize(**arguments)


def run(main) -> None:
  """Calls `main()`; the faults of a run become a message and exit status."""
  # pylint: disable=g-import-not-at-top
  from training import input_pipeline
  try:
    main()
  except faults.RunStopped as e:
    sys.stderr.write(f'{e}\n')
    sys.exit(faults.EXIT_STOPPED)
  except faults.Diverged as e:
    fail(str(e), faults.EXIT_DIVERGED)
  except faults.WriteError as e:
    # The writer threads of a failed Orbax save may never end, and the
    # interpreter would wait for them (300 s) before exiting.
    _exit_at_once(str(e), faults.EXIT_WRITE_FAILED)
  except (ValueError, input_pipeline.DataNotFoundError) as e:
    # Bad input: one clear message, no stack trace.
    fail(str(e))
  except KeyboardInterrupt as e:
    # One with a message says what it stopped (download.Interrupted: a
    # download, at the first signal); a bare one is a second Ctrl-C.
    fail(str(e) or 'interrupted by a second Ctrl-C before a checkpoint was '
         'saved; the run resumes from its last checkpoint.',
         faults.EXIT_INTERRUPTED)
  except Exception as e:  # pylint: disable=broad-except
    if not _lost_peer(e):
      raise
    # JAX's exit would wait for the lost process at a shutdown barrier until
    # the heartbeat times out, then abort with a core dump.
    import jax  # pylint: disable=g-import-not-at-top
    _exit_at_once(
        f'process {jax.process_index()} of a multi-process run lost contact '
        f'with another process ({faults.first_line(e)}); the last complete '
        'checkpoint is intact: run the same command on every process again '
        'to resume.', faults.EXIT_PEER_LOST)


def _exit_at_once(message: str, status: int) -> None:
  """`error: message`, then exits with `status` without the interpreter's
  clean-up (threads, atexit), which could wait long or forever."""
  sys.stderr.write(f'error: {message}\n')
  sys.stderr.flush()
  sys.stdout.flush()
  logging.flush()
  os._exit(status)  # pylint: disable=protected-access


def _lost_peer(e: BaseException) -> bool:
  """Whether `e` is a collective that failed because another process of a
  multi-process run is gone (JAX raises it as a runtime error)."""
  if 'jax' not in sys.modules:
    return False
  import jax  # pylint: disable=g-import-not-at-top
  return (isinstance(e, jax.errors.JaxRuntimeError) and
          jax.process_count() > 1)
