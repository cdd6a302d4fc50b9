"""``python -m tgcnet.cli ...`` and ``torchrun -m tgcnet.cli train ...``."""
import sys

from tgcnet.cli import main

sys.exit(main())
