"""One module per ``audiogen`` subcommand: ``register(subparsers)`` and ``run(args)``.
Modules whose names start with ``_`` are helpers the commands share, not commands.

Keep module-level imports cheap (argparse, pathlib): heavy libraries are imported
inside ``run`` so ``audiogen --help`` stays fast.
"""
