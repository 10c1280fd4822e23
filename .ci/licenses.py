#!/usr/bin/env python3
"""Licence check: every crate in the dependency graph (all features, dev-dependencies and
every platform included) must be usable under a licence from ALLOWED.

Reads `cargo metadata`, so it needs nothing installed and no network once the dependencies
are downloaded (it runs in well under a second). It does what `cargo deny check licenses`
would; RustSec advisories are not checked, because their database is fetched from GitHub,
which this project's machines cannot reach.

A crate's `license` field is an SPDX expression (`A OR B`, `A AND B`, `A WITH exception`,
parentheses; the legacy `A/B` means `A OR B`). It passes if the expression can be satisfied
with allowed licences. A crate with no `license` field (only `license-file`) fails: review
its licence by hand and, if acceptable, add it to EXCEPTIONS with the reason.
"""

import json
import re
import subprocess
import sys

# Permissive licences compatible with sealpipe's "MIT OR Apache-2.0".
ALLOWED = {
    "MIT",
    "MIT-0",
    "Apache-2.0",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "ISC",
    "Zlib",
    "Unlicense",
    "CC0-1.0",
    "Unicode-3.0",
}

# Crates reviewed by hand: name -> why they are acceptable. None yet.
EXCEPTIONS = {}


def satisfiable(expr):
    """Whether the SPDX expression can be satisfied with ALLOWED licences."""
    tokens = re.findall(r"\(|\)|[A-Za-z0-9.+-]+", expr.replace("/", " OR "))
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def take():
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def atom():
        if peek() == "(":
            take()
            value = any_of()
            if take() != ")":
                raise ValueError("unbalanced parentheses")
            return value
        licence = take()
        if peek() == "WITH":
            take()
            take()  # an exception only adds permissions to the licence it follows
        return licence.rstrip("+") in ALLOWED

    def all_of():
        value = atom()
        while peek() == "AND":
            take()
            value = atom() and value
        return value

    def any_of():
        value = all_of()
        while peek() == "OR":
            take()
            value = all_of() or value
        return value

    value = any_of()
    if pos != len(tokens):
        raise ValueError("trailing tokens")
    return value


def main():
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--all-features", "--locked"],
        check=True,
        stdout=subprocess.PIPE,
    ).stdout
    meta = json.loads(out)
    in_graph = {node["id"] for node in meta["resolve"]["nodes"]}
    bad = []
    checked = 0
    for package in meta["packages"]:
        if package["id"] not in in_graph or package["name"] in EXCEPTIONS:
            continue
        checked += 1
        licence = package.get("license")
        try:
            ok = licence is not None and satisfiable(licence)
        except (ValueError, IndexError):
            ok = False
        if not ok:
            bad.append("{} {}: {}".format(package["name"], package["version"], licence))
    for line in sorted(bad):
        print("licence not allowed:", line)
    print("{} crates checked, {} not allowed".format(checked, len(bad)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
