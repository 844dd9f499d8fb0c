"""Test hooks, each off unless its variable is set; put this folder on PYTHONPATH.

CONVSCOPE_TEST_DIE_AT="RANK EPOCH BATCH" (add "always" to die on every restart too): the worker
of that global rank SIGKILLs itself at the end of that training batch of its first attempt,
after the batch's checkpoint, if any.

CONVSCOPE_TEST_SIGINT_BEFORE=MODULE: the process sends itself SIGINT (a user's Ctrl-C) just
before MODULE is first imported.

Either way a test chooses where the kill or the interrupt lands instead of racing the host's
speed."""

import os

_spec = os.environ.get("CONVSCOPE_TEST_DIE_AT")
if _spec:
    _rank, _epoch, _batch, *_mode = _spec.split()
    _restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if os.environ.get("RANK") == _rank and (_mode == ["always"] or _restart == 0):
        import signal

        import convscope.learner as _learner
        from convscope.callback import Callback

        class _DieAt(Callback):
            order = 100  # after the CheckpointCallback (90)

            def after_batch(self):
                if self.learn.training and (self.learn.epoch, self.learn.iter) == (
                        int(_epoch), int(_batch)):
                    os.kill(os.getpid(), signal.SIGKILL)

        _original = _learner.Learner.__init__

        def _patched(self, *args, **kwargs):
            _original(self, *args, **kwargs)
            self.add_cb(_DieAt())

        _learner.Learner.__init__ = _patched


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
