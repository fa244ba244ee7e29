#!/usr/bin/env python3
"""Runs every loom command README.md shows, as written, with the built loom.

A command is a line in a fenced code block that starts with `loom `, `build/loom `,
`./build/loom ` or `mpirun ... loom` after an optional `$ ` prompt (a trailing `\\` continues it
on the next line). In a block that has `$ ` prompts only the prompted lines are commands (the
rest is their output); in a ```sh, ```bash or ```console block without prompts every such line
is. Commands run in order, in one fresh working directory per run that links the checkout's
top-level folders (so `tests/...` and `models/...` paths resolve) and holds `build/loom` (the
binary under test); files the commands write stay there, and the checkout is left as it was.

A command marked at the end of its line with `# needs: gpu` or `# needs: mpi` needs what it
names; `gpu` ones are skipped, `mpi` ones run where `mpirun` is on PATH (as root and with more
ranks than cores, as CI is) and are skipped otherwise; each skip is printed. Any other command
that exits non-zero fails the test.

usage: run_readme_commands.py LOOM_BIN README.md [--list] [--timeout SECONDS]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

PROMPT = "$ "
LOOM_START = re.compile(r"^(\./build/loom|build/loom|loom)\s")
MPI_START = re.compile(r"^mpirun\s.*\b(\./build/loom|build/loom|loom)\s")
NEEDS = re.compile(r"#\s*needs:\s*([a-z, ]+)\s*$")
SHELL_LANGS = {"sh", "bash", "console", "shell"}


def fenced_blocks(text):
    """Yields (language, first line number, lines) of each fenced block."""
    lang, start, lines = None, 0, []
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*```(\S*)\s*$", line)
        if fence and lang is None:
            lang, start, lines = fence.group(1), number + 1, []
        elif fence:
            yield lang, start, lines
            lang = None
        elif lang is not None:
            lines.append(line)
    if lang is not None:
        raise SystemExit(f"README: the block opened at line {start - 1} is never closed")


def joined(lines, start):
    """(line number, logical line) with backslash continuations joined."""
    out, i = [], 0
    while i < len(lines):
        number, line = start + i, lines[i]
        while line.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line.rstrip()[:-1].rstrip() + " " + lines[i].strip()
        out.append((number, line))
        i += 1
    return out


def commands(text):
    """(line number, command, needs) of every loom command, in README order."""
    found = []
    for lang, start, lines in fenced_blocks(text):
        prompted = any(l.startswith(PROMPT) for l in lines)
        if not prompted and lang not in SHELL_LANGS:
            continue
        for number, line in joined(lines, start):
            if prompted:
                if not line.startswith(PROMPT):
                    continue
                line = line[len(PROMPT):]
            line = line.strip()
            if not (LOOM_START.match(line) or MPI_START.match(line)):
                continue
            needs = NEEDS.search(line)
            found.append((number, line, set(n.strip() for n in needs.group(1).split(",")) if needs else set()))
    return found


def fresh_directory(loom_bin, source_dir):
    """A working directory with the checkout's top-level entries linked and build/loom."""
    work = tempfile.mkdtemp(prefix="loom_readme_")
    for entry in os.listdir(source_dir):
        if entry in ("build", ".git") or entry.startswith("build-"):
            continue
        os.symlink(os.path.join(source_dir, entry), os.path.join(work, entry))
    os.mkdir(os.path.join(work, "build"))
    os.symlink(os.path.abspath(loom_bin), os.path.join(work, "build", "loom"))
    return work


def run_all(loom_bin, readme, timeout_s):
    source_dir = os.path.dirname(os.path.abspath(readme))
    with open(readme, encoding="utf-8") as f:
        found = commands(f.read())
    if not found:
        print("no loom commands found in", readme)
        return 1
    have_mpi = shutil.which("mpirun") is not None
    work = fresh_directory(loom_bin, source_dir)
    env = dict(os.environ, PATH=os.path.join(work, "build") + os.pathsep + os.environ.get("PATH", ""),
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1")
    failed, skipped, ran = [], [], 0
    try:
        for number, cmd, needs in found:
            if "gpu" in needs or ("mpi" in needs and not have_mpi):
                why = "gpu" if "gpu" in needs else "mpi (no mpirun on PATH)"
                skipped.append(f"README.md:{number}: skipped, needs {why}: {cmd}")
                continue
            try:
                r = subprocess.run(["bash", "-c", cmd], cwd=work, env=env, capture_output=True, text=True,
                                   timeout=timeout_s)
                code, err = r.returncode, r.stderr
            except subprocess.TimeoutExpired:
                code, err = "timeout", f"ran past {timeout_s} s"
            ran += 1
            status = "ok" if code == 0 else f"FAILED (exit {code})"
            print(f"README.md:{number}: {status}: {cmd}")
            if code != 0:
                failed.append(number)
                print("  " + "\n  ".join(err.strip().splitlines()[-5:]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for s in skipped:
        print(s)
    print(f"{ran} commands run, {len(failed)} failed, {len(skipped)} skipped")
    return 1 if failed else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("loom_bin")
    ap.add_argument("readme")
    ap.add_argument("--list", action="store_true", help="print the commands found and exit")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per command (default 300)")
    a = ap.parse_args()
    if a.list:
        with open(a.readme, encoding="utf-8") as f:
            for number, cmd, needs in commands(f.read()):
                print(f"{number}: {cmd}" + (f"   [needs {', '.join(sorted(needs))}]" if needs else ""))
        return 0
    return run_all(a.loom_bin, a.readme, a.timeout)


if __name__ == "__main__":
    sys.exit(main())
