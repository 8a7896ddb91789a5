#!/usr/bin/env python3
"""sass-census.py: counts the SASS instructions of kernels in a Hopper cubin without a disassembler.

This machine has nvcc and ptxas but no cuobjdump / nvdisasm, and the code GEMVs' speed follows their instruction count
(native/NOTES-nf4-gemv.md, sessions 26-27), so a change's effect on the instruction mix can be read here before it goes
to the GPU. An sm_90 instruction is 16 bytes; the low 12 bits of its first 64-bit word name the operation. The names
come from tools/sass-opcodes-sm90.json, learned from `cuobjdump -sass` listings of this project's own cubins on the GPU
machine (107 operations, each low-12-bit value one mnemonic in every listing); an operation not seen there prints as
"?xyz" (its hex code): add it from a new listing.

  tools/sass-census.py CUBIN [KERNEL_REGEX] [--diff OTHER_CUBIN] [--loops]

prints, per kernel whose name matches, the instruction count and the operations' counts (with --diff: this cubin's
count, the other's and the difference, for the operations that differ); --loops also prints the body of each backward
branch (target to branch) with 100 or more instructions.
"""
import collections
import json
import os
import re
import struct
import sys


def sections(path):
    """{name: bytes} of an ELF64 little-endian file's sections."""
    data = open(path, 'rb').read()
    if data[:4] != b'\x7fELF' or data[4] != 2:
        sys.exit(f'{path}: not an ELF64 file (a cubin from nvcc -cubin)')
    shoff, = struct.unpack_from('<Q', data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from('<HHH', data, 0x3A)
    heads = [struct.unpack_from('<IIQQQQIIQQ', data, shoff + i * shentsize) for i in range(shnum)]
    strtab = heads[shstrndx]
    names = data[strtab[4]:strtab[4] + strtab[5]]
    out = {}
    for h in heads:
        name = names[h[0]:names.index(b'\0', h[0])].decode()
        out[name] = data[h[4]:h[4] + h[5]]
    return out


def decode(text, table):
    """The operation names of a kernel's instructions, in order, and its backward branches as (target, branch) indices."""
    ops, back = [], []
    for i in range(0, len(text) - 15, 16):
        word, = struct.unpack_from('<Q', text, i)
        code = '%03x' % (word & 0xFFF)
        op = table.get(code, '?' + code)
        ops.append(op)
        if op == 'BRA':
            # the relative target in 4-byte units: bits 16..31 plus the signed upper word times 64 (fitted to the
            # listings' forward and backward branches)
            hi = struct.unpack_from('<i', text, i + 4)[0]
            rel = 4 * (hi * 64 + ((word >> 16) & 0xFFFF))
            if rel < 0:
                back.append(((i + 16 + rel) // 16, i // 16))
    return ops, back


def kernels(path, pattern, table):
    return {name[len('.text.'):]: decode(body, table) for name, body in sections(path).items()
            if name.startswith('.text.') and re.search(pattern, name[len('.text.'):])}


def counted(ops):
    return ', '.join(f'{op} {n}' for op, n in collections.Counter(ops).most_common(14))


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    other = None
    show_loops = '--loops' in argv
    argv = [a for a in argv if a != '--loops']
    if '--diff' in argv:
        i = argv.index('--diff')
        other = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    pattern = argv[2] if len(argv) > 2 else '.'
    table = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'sass-opcodes-sm90.json')))
    mine = kernels(argv[1], pattern, table)
    theirs = kernels(other, pattern, table) if other else {}
    for name in sorted(mine):
        ops, back = mine[name]
        c = collections.Counter(ops)
        if other:
            o = collections.Counter(theirs.get(name, ([], []))[0])
            print(f'{name}: {sum(c.values())} instructions ({sum(o.values())} in {other}, {sum(c.values()) - sum(o.values()):+d})')
            for op in sorted(set(c) | set(o), key=lambda k: -abs(c[k] - o[k])):
                if c[op] != o[op]:
                    print(f'  {op:10s} {c[op]:6d} {o[op]:6d} {c[op] - o[op]:+6d}')
        else:
            print(f'{name}: {sum(c.values())} instructions')
            print('  ' + ', '.join(f'{op} {n}' for op, n in c.most_common()))
        if show_loops:
            for a, b in back:
                if b - a >= 100:
                    print(f'  loop {a * 16:#06x}..{b * 16:#06x}: {b - a + 1} instructions: {counted(ops[a:b + 1])}')


if __name__ == '__main__':
    main(sys.argv)
