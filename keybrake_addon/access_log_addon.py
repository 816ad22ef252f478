"""The access log's mitmproxy options, declared and checked the way mitmproxy's own addons do.

Apart from access_log.py so the gate, which writes the lines, does not import mitmproxy.
"""

from mitmproxy import ctx, exceptions

from .access_log import FORMATS, AccessLog


class AccessLogAddon:
    """The mitmproxy options: keybrake_access_log (json, text, off) and keybrake_access_log_file."""

    def __init__(self, log: AccessLog) -> None:
        self.log = log

    def load(self, loader) -> None:
        loader.add_option("keybrake_access_log", str, "off",
                          "One line per vendor call and per refusal: json, text (logfmt) or off.",
                          choices=list(FORMATS))
        loader.add_option("keybrake_access_log_file", str, "",
                          "Append the access log to this file (reopened when rotated); empty: stderr.")

    def configure(self, updated) -> None:
        if updated & {"keybrake_access_log", "keybrake_access_log_file"}:
            path = ctx.options.keybrake_access_log_file or None
            try:
                self.log.configure(ctx.options.keybrake_access_log, path)
            except ValueError as error:
                raise exceptions.OptionsError(f"access log: {error}") from None
            except OSError as error:
                raise exceptions.OptionsError(f"access log: cannot open {path}: {error.strerror}") from None

    def done(self) -> None:
        self.log.close()
