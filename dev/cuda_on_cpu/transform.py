#!/usr/bin/env python3
"""Copies a CUDA source with every kernel launch `k<<<grid, block>>>(args)`
rewritten as `emu::Launcher(grid, block).bind(k, "k")(args)`, which g++ can
compile against include/emu_core.h, and every `__shared__` declaration (in a
kernel) followed by `emu::shared_declared(&name, sizeof name);` for each
variable it declares: g++ ignores the section attribute that __shared__
stands for on the static variables of a function template (GCC bug 70435),
so the runtime learns where those are from the call instead. The copy keeps
every line where it was and starts with a #line directive, so that compiler
messages, __FILE__ and AddressSanitizer name the original file and line.

usage: transform.py IN OUT
"""
import re
import sys

# the kernel's name (possibly a template instance), then <<<config>>>(
LAUNCH = re.compile(r'([A-Za-z_]\w*(?:\s*<[^<>;{}]*>)?)\s*<<<(.*?)>>>\s*\(', re.S)


def rewrite_launch(m):
    kernel, config = m.group(1), m.group(2)
    # the config keeps its newlines, so that the lines after it stay in place
    return 'emu::Launcher(%s).bind(%s, "%s")(' % (config, kernel, re.sub(r'\s+', ' ', kernel))


# a __shared__ declaration statement: `__shared__ [__align__(n)] TYPE a[..], b[..];`
SHARED = re.compile(r'__shared__([^;]*);')


def register_shared(m):
    # the declarators without their array bounds and alignment: "T a, b"
    declarators = re.sub(r'\[[^\]]*\]', '', m.group(1))
    declarators = re.sub(r'__align__\s*\([^)]*\)', '', declarators)
    names = [re.findall(r'\w+', part)[-1] for part in declarators.split(',')]
    calls = ''.join(' emu::shared_declared(&%s, sizeof %s);' % (n, n) for n in names)
    return m.group(0) + calls


def main():
    src, dst = sys.argv[1], sys.argv[2]
    with open(src) as f:
        text = LAUNCH.sub(rewrite_launch, f.read())
    text = SHARED.sub(register_shared, text)
    if '<<<' in text or '>>>' in text:
        sys.exit('transform.py: %s: a launch was left untransformed' % src)
    with open(dst, 'w') as f:
        f.write('#line 1 "%s"\n' % src)
        f.write(text)


if __name__ == '__main__':
    main()
