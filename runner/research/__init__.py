"""Commands on logged runs: reproduce and resume, re-evaluation under other solvers, the comparison report, studies."""
