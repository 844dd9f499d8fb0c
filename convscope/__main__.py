"""`python -m convscope ...`: the same as the `convscope` command."""

from convscope.cli import run

run()
