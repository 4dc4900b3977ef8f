"""What the tests share besides fixtures: real servers and Redis processes to run, a fake model,
and helpers more than one test module (or a benchmark) uses."""
