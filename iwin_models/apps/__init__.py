"""What users run: the ``iwin-seg`` commands (:mod:`.cli`), the demo page (:mod:`.demo`), the evaluation report
(:mod:`.report`) and the pictures of a result (:mod:`.visualize`)."""
