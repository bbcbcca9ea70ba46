"""One error type for every bad input the pack refuses.

ComfyUI shows an exception's text to the user, so each message says which input was wrong,
what was found, what was expected and how to fix it.
"""


class ZImageInputError(ValueError):
    """A user-facing input problem. Subclasses ValueError so callers can catch either."""

    def __init__(self, what: str, found: str, expected: str, fix: str):
        self.what, self.found, self.expected, self.fix = what, found, expected, fix
        super().__init__(f"{what}: found {found}; expected {expected}. How to fix: {fix}")
