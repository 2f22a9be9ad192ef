"""``python -m anobench``: the ``bench`` command."""

from anobench.cli import main

if __name__ == "__main__":  # importing the module (a documentation tool does) runs nothing
    main()
