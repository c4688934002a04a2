"""The one exception type for bad input.

Library code raises :class:`UserError` with one sentence a user can act on; the CLI layer
(:func:`probes.cli.run_cli`) prints that sentence and exits with code 2, never a traceback.
"""


class UserError(Exception):
    """Bad input from the user: an unknown model, an unreadable image, a layer out of range.

    The message is one sentence that says what is wrong and, where possible, what to do.
    """
