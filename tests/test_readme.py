"""The README's Optax example runs as written."""

import os
import re

README = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'README.md')


def test_readme_python_example_runs():
  with open(README) as f:
    blocks = re.findall(r'```python\n(.*?)```', f.read(), re.S)
  assert blocks, 'README has no python example'
  namespace = {}
  exec(compile(blocks[0], 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  params = namespace['params']
  # One Padam step moved the parameters.
  assert float(abs(params['w'] - 1.0).max()) > 0
