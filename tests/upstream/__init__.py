"""Our own rewrite of the original gcache's (rungalileo/gcache 2.0.5) test suite; see README.md."""
