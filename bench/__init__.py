"""How it is measured: timing, roofline, runner, suites, results, report and the CLI."""
