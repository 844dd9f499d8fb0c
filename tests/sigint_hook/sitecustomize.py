"""Test hook: put this folder on PYTHONPATH and set CONVSCOPE_TEST_SIGINT_BEFORE=MODULE: the
process sends itself SIGINT (a user's Ctrl-C) just before MODULE is first imported, so a test
chooses where in start-up the interrupt lands instead of racing the host's speed."""

import os

_module = os.environ.get("CONVSCOPE_TEST_SIGINT_BEFORE")
if _module:
    import signal
    import sys

    class _InterruptBefore:
        def find_spec(self, name, path=None, target=None):
            if name == _module:
                sys.meta_path.remove(self)
                os.kill(os.getpid(), signal.SIGINT)
            return None

    sys.meta_path.insert(0, _InterruptBefore())
