"""The adapter contract suite: one set of tests run against every chain adapter (issue 8 part 5)."""
