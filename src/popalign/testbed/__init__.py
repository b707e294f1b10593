"""The testbed: a synthetic alignment task with a known ground-truth reward, and ``popalign reproduce``.

- :mod:`~popalign.testbed.task`: prompts, replies and the ground-truth reward ``r*`` (1-10);
- :mod:`~popalign.testbed.make_data`: behaviour policy, annotator noise, UltraFeedback-style binarising;
- :mod:`~popalign.testbed.settings`, :mod:`~popalign.testbed.plan`: what ``popalign reproduce`` trains;
- :mod:`~popalign.testbed.reproduce`: the resumable pipeline (SFT, every method and seed, evaluation);
- :mod:`~popalign.testbed.results`, :mod:`~popalign.testbed.claims`: per-example results, the paper's claims
  and their verdicts;
- :mod:`~popalign.testbed.report`, :mod:`~popalign.testbed.figures`: the Markdown / HTML report.

See docs/testbed.md.
"""
