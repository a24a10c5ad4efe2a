"""The command line: argument parsing (main.py) and one module per verb group (mount.py: mount,
umount, stats, compact; swap.py: swapon, swapoff; listing.py: list/status; lab.py: capture,
bench).

May import every other package (service, lab, engine, fs); nothing imports it. User-facing failures
are one line on stderr and a non-zero exit status, never a traceback.
"""


class CliError(Exception):
    """A failure to report to the user as one line."""
