"""The command line: the only place that prints for users and chooses exit codes."""
