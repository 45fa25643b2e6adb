"""``python -m retinanet`` (and ``torchrun -m retinanet``) run the command-line interface."""

from retinanet.cli import main

raise SystemExit(main())
