"""What the tests share: running the commands, composing configs, tiny plans, images, ratings and runs."""
