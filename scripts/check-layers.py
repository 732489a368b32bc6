#!/usr/bin/env python3
"""The house's shape, checked: the floors run one way (http -> cluster -> actors -> agent ->
media -> store -> ingest; nothing lower names anything higher through `crate::`), and the
files of `src/store` import each other without a cycle (`super::x` references, tests aside).
Exits 1 with what is wrong."""

import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
FLOORS = ["http", "cluster", "actors", "agent", "media", "store", "ingest"]


def code(path):
    s = open(path).read()
    i = s.find("#[cfg(test)]")
    s = s[:i] if i >= 0 else s
    return re.sub(r"//[^\n]*", "", s)


def files(folder):
    for base, _, names in os.walk(folder):
        for n in names:
            if n.endswith(".rs"):
                yield os.path.join(base, n)


problems = []
for level, floor in enumerate(FLOORS):
    higher = FLOORS[:level]
    for path in files(os.path.join(ROOT, floor)):
        text = code(path)
        for h in higher:
            if re.search(rf"crate::{h}\b", text) or re.search(rf"crate::\{{[^}}]*\b{h}\b", text):
                problems.append(f"{os.path.relpath(path, ROOT)} (floor {floor}) names crate::{h}, a higher floor")

store = os.path.join(ROOT, "store")
mods = [n[:-3] for n in os.listdir(store) if n.endswith(".rs") and n != "mod.rs"]
graph = {}
for m in mods:
    text = code(os.path.join(store, m + ".rs"))
    deps = {x for x in re.findall(r"super::(\w+)", text) if x in mods and x != m}
    for block in re.findall(r"use super::\{(.*?)\};", text, re.S):
        deps |= {x for x in re.findall(r"\b(\w+)\b", block) if x in mods and x != m}
    graph[m] = deps


def cycle_from(start):
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for d in graph[node]:
            if d == start:
                return path + [start]
            if d not in seen:
                seen.add(d)
                stack.append((d, path + [d]))
    return None


reported = set()
for m in sorted(mods):
    c = cycle_from(m)
    if c and frozenset(c) not in reported:
        reported.add(frozenset(c))
        problems.append("import cycle in src/store: " + " -> ".join(c))

if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"layers: {len(FLOORS)} floors one way; src/store: {len(mods)} files, no import cycle")
