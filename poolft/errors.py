"""The one exception type for mistakes a user can fix; the CLI prints it as one line."""


class PoolftError(Exception):
    """A problem with the user's input (config, data, model, output folder), with the fix in the message."""
