"""``python -m tasks``: the ``sched`` command line."""

from tasks.cli import main

main()
