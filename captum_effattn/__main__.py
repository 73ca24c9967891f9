r"""``python -m captum_effattn``: the ``captum-effattn`` command."""

import sys

from captum_effattn.cli import main

if __name__ == "__main__":
    sys.exit(main())
