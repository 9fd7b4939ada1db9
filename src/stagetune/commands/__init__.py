"""The console commands: thin entry points that parse, call and report in one line."""
