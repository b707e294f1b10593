"""Evaluation: discriminative metrics, RewardBench-format scores, generation, judged win rates, reports.

Pure metric code (numpy in, numbers out): :mod:`.stats`, :mod:`.discriminative`, :mod:`.rewardbench`,
:mod:`.judge`. Models and files: :mod:`.scoring` (rewards from policies, reward models, functions),
:mod:`.generate`, :mod:`.plots`, :mod:`.report`, and :mod:`.pipeline` (one function per ``popalign eval``
sub-command). Importing this package imports none of them, so the CLI stays fast.
"""
