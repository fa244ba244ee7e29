#!/usr/bin/env python3
"""Fails when a function in the given folders is longer than the limit (lines from its
signature's opening brace to its closing brace, both included).

A function is a brace block opened at namespace level whose header is not a namespace,
class, struct, union, enum or an initialised variable; lambdas and local classes inside a
function count towards it. Strings, characters and comments are skipped when counting braces.
Usage: function_length.py LIMIT DIR [DIR ...]
"""
import re
import sys
from pathlib import Path

NOT_FUNCTION = re.compile(r"\b(namespace|class|struct|union|enum)\b[^()]*$|=\s*$|=\s*\{?$")


def strip(text):
    """The source with comments, strings and character literals blanked (newlines kept)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i)); i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j])); i = j
        elif text.startswith('R"', i):
            m = re.match(r'R"([^(]*)\(', text[i:])
            end = text.find(")" + m.group(1) + '"', i) if m else -1
            j = n if end < 0 else end + len(m.group(1)) + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j])); i = j
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(" " * (j + 1 - i)); i = j + 1
        else:
            out.append(c); i += 1
    return "".join(out)


def functions(path):
    """(name line, length) of every function defined at namespace level in `path`."""
    text = strip(path.read_text())
    lines = text.split("\n")
    depth_stack = []  # for each open brace: True when it opens a function body
    header = ""
    found = []
    start = 0
    for lineno, line in enumerate(lines, 1):
        for ch in line:
            if ch == "{":
                inside_function = any(depth_stack)
                is_function = not inside_function and ")" in header and not NOT_FUNCTION.search(header.strip())
                if is_function:
                    start = lineno
                depth_stack.append(is_function)
                header = ""
            elif ch == "}":
                was_function = depth_stack.pop() if depth_stack else False
                if was_function:
                    found.append((start, lineno - start + 1))
                header = ""
            elif ch == ";" and not any(depth_stack):
                header = ""
            elif not any(depth_stack):
                header += ch
        if not any(depth_stack):
            header += " "
    return found


def main():
    limit = int(sys.argv[1])
    bad = []
    for d in sys.argv[2:]:
        for path in sorted(Path(d).rglob("*")):
            if path.suffix not in (".cpp", ".hpp", ".h", ".cc"):
                continue
            for start, length in functions(path):
                if length > limit:
                    bad.append(f"{path}:{start}: function of {length} lines (limit {limit})")
    for b in bad:
        print(b)
    print(f"{len(bad)} functions over {limit} lines")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
