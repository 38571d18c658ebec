"""One module per ``audiogen`` subcommand: ``register(subparsers)`` and ``run(args)``.

Keep module-level imports cheap (argparse, pathlib): heavy libraries are imported
inside ``run`` so ``audiogen --help`` stays fast.
"""
