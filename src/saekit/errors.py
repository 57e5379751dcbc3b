"""One exception type for every user-facing problem, so the CLI can print one clear line."""


class SaekitError(Exception):
    """Bad input (config, data, files) described in one line for the user."""
