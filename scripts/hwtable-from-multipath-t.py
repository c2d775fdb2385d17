#!/usr/bin/env python3
"""Regenerates the data of src/config/hwtable.rs (BUILTIN_HWTABLE) from the
`devices` section that `multipath -t` prints with an empty configuration.

    multipath -t | ./scripts/hwtable-from-multipath-t.py > /tmp/table.rs

Paste the output between the BEGIN/END markers of src/config/hwtable.rs.
Run multipath in a private mount namespace if /etc/multipath.conf exists
(see tests/multipath_oracle.rs)."""
import re
import sys


def rust_str(s):
    return '"' + s.replace('\\', '\\\\').replace('"', '\\"') + '"'


def main():
    lines = sys.stdin.read().split('\n')
    in_devices = False
    entry = None
    out = []
    for line in lines:
        if line == 'devices {':
            in_devices = True
            continue
        if not in_devices:
            continue
        if line == '}':
            break
        s = line.strip()
        if s == 'device {':
            entry = []
            continue
        if s == '}':
            out.append(entry)
            entry = None
            continue
        m = re.match(r'^(\S+) (?:"(.*)"|(\S+))$', s)
        if not m or entry is None:
            sys.exit('cannot parse: %r' % line)
        entry.append((m.group(1), m.group(2) if m.group(2) is not None else m.group(3)))
    for e in out:
        d = dict(e)
        attrs = [(k, v) for k, v in e if k not in ('vendor', 'product', 'revision')]
        rev = d.get('revision')
        body = ', '.join('(%s, %s)' % (rust_str(k), rust_str(v)) for k, v in attrs)
        if rev is None:
            print('    hw(%s, %s, &[%s]),' % (rust_str(d['vendor']), rust_str(d['product']), body))
        else:
            print('    HwEntry { vendor: %s, product: %s, revision: Some(%s), attrs: &[%s] },'
                  % (rust_str(d['vendor']), rust_str(d['product']), rust_str(rev), body))


main()
