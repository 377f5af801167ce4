"""``python -m tasks``: the ``sched`` command line."""

from tasks.ops.cli import main

main()
