"""``python -m stagetune`` is the ``stagetune`` command."""

from stagetune.train import main

if __name__ == "__main__":
    main()
