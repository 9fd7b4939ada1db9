"""``python -m stagetune`` is the ``stagetune`` command."""

from stagetune.commands.train import main

if __name__ == "__main__":
    main()
