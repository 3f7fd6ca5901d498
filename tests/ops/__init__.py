"""The op families' tests: one file per family (``backends.OP_TABLE``), its torch oracle run
over every backend; the cuda tests are marked ``cuda`` and run in their own process
(scripts/test.sh)."""
