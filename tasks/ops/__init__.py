"""``sched``, the operator's command line: its commands, errors, status report, live view,
``sched run`` and the demo data set."""
