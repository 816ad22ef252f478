"""Paths the gate refuses before any vendor module looks at them.

A path with dot segments, empty segments, escaped separators or path parameters (`;`: a
Tomcat-style server reads `/x/..;/y` as `/y`) may be resolved by the vendor (or a server in front
of it) to another endpoint than the one the allowlist and the pricing saw. No vendor's API puts
a `;` in its paths. Refusing them once, here, keeps every vendor module and the allowlist honest.
"""

import re

_AMBIGUOUS = re.compile(r"//|/\.\.?(?:/|$)|%2e|%2f|%5c|\\|;|%3b", re.IGNORECASE)


def is_ambiguous(path: str) -> bool:
    return bool(_AMBIGUOUS.search(path))
