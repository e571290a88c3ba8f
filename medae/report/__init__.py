"""Looking at results: ``OUT/index.html`` (the batch report) and ``medae view`` (a local server
for the interactive case pages built on the vendored NiiVue viewer)."""

from medae.report.index import write_index

__all__ = ["write_index"]
