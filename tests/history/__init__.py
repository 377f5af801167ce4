"""A recorded-history test of the whole system and its checker: every process of a run
appends what it did and saw to a history (:mod:`tests.history.record`), and
:mod:`tests.history.checker` judges the history afterwards."""
