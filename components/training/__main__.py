"""``python -m components.training``: run one rank (see :mod:`components.training.rank`)."""

from components.training.rank import main

if __name__ == "__main__":
    main()
