"""``python -m voxelfm`` (used by ``torchrun -m voxelfm ...``)."""

from voxelfm.cli.main import main

raise SystemExit(main())
