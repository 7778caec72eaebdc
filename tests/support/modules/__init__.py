"""Small programs that follow mercure's processing-module contract, for the command pipeline
tests: they read ``MERCURE_IN_DIR`` and write to ``MERCURE_OUT_DIR`` as a site's module would."""
