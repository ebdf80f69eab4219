#!/usr/bin/env python3
"""Walks a migration stream file the way QEMU's scripts/analyze-migration.py does (same rules,
independent code written for Modular) and prints a JSON summary. Exit status 1 on any error."""
import json
import struct
import sys


class Walk:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, n):
        if self.pos + n > len(self.data):
            raise ValueError("truncated at 0x%x" % self.pos)
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def u8(self):
        return self.take(1)[0]

    def be16(self):
        return struct.unpack(">H", self.take(2))[0]

    def be32(self):
        return struct.unpack(">I", self.take(4))[0]

    def be64(self):
        return struct.unpack(">Q", self.take(8))[0]

    def counted(self):
        return self.take(self.u8()).decode("utf-8")


def find_description(data):
    # The JSON has no NUL; the last NUL before it is inside its be32 length.
    tail_start = max(0, len(data) - 10 * 1024 * 1024)
    tail = data[tail_start:]
    nul = tail.rfind(b"\0")
    brace = tail.find(b"{", nul)
    at = tail_start + brace
    if data[at - 5] != 0x06:
        raise ValueError("no VMDESCRIPTION before the JSON")
    length = struct.unpack(">I", data[at - 4:at])[0]
    return json.loads(data[at:at + length].decode("utf-8"))


def read_ram(w, page_size, state):
    while True:
        word = w.be64()
        flags = word & (page_size - 1)
        addr = word & ~(page_size - 1)
        if flags & 0x04:
            left = addr
            while left > 0:
                name = w.counted()
                length = w.be64()
                state["blocks"][name] = length
                left -= length
            flags &= ~0x04
        if flags & 0x02:
            if flags & 0x20:
                flags &= ~0x20
            else:
                state["block"] = w.counted()
            w.u8()
            state["zero_pages"] += 1
            flags &= ~0x02
        elif flags & 0x08:
            if flags & 0x20:
                flags &= ~0x20
            else:
                state["block"] = w.counted()
            page = w.take(page_size)
            state["pages"] += 1
            state["first_bytes"].append(page[0])
            flags &= ~0x08
        if flags & 0x10:
            return
        if flags != 0:
            raise ValueError("unknown RAM flags 0x%x" % flags)


def read_value(w, field):
    """One field as the description gives it: a struct (its own fields and subsections), or size
    bytes (an integer, big-endian, as QEMU's analyzer shows them). read_fields repeats it for an
    array of array_len elements."""
    if "struct" in field:
        out = {}
        read_fields(w, field["struct"], out)
        return out
    data = w.take(int(field["size"]))
    # Buffers (an XSAVE area, a FIFO) are shown by size, as numbers they would be unreadable.
    return int.from_bytes(data, "big") if len(data) <= 8 else "<%d bytes>" % len(data)


def read_fields(w, desc, out):
    for field in desc.get("fields", []):
        if "array_len" in field:
            out[field["name"]] = [read_value(w, field) for _ in range(int(field["array_len"]))]
        else:
            out[field["name"]] = read_value(w, field)
    # The description lists the subsections the source wrote, each after its marker.
    for sub in desc.get("subsections", []):
        if w.u8() != 0x05:
            raise ValueError("subsection %s missing at 0x%x" % (sub["vmsd_name"], w.pos - 1))
        name = w.counted()
        if name != sub["vmsd_name"]:
            raise ValueError("subsection %s where the description has %s, at 0x%x" % (name, sub["vmsd_name"], w.pos))
        w.be32()
        out[name] = {}
        read_fields(w, sub, out[name])


def main(path):
    data = open(path, "rb").read()
    desc = find_description(data)
    w = Walk(data)
    if w.be32() != 0x5145564D:
        raise ValueError("bad magic")
    if w.be32() != 3:
        raise ValueError("bad version")
    devices = {(d["name"], d["instance_id"]): d for d in desc["devices"]}
    page_size = desc["page_size"]
    summary = {"configuration": None, "sections": {}}
    readers = {}
    last_id = None
    while True:
        kind = w.u8()
        if kind == 0x00:
            break
        if kind == 0x07:
            summary["configuration"] = w.take(w.be32()).decode("utf-8")
        elif kind in (0x01, 0x04):
            last_id = w.be32()
            name = w.counted()
            instance = w.be32()
            version = w.be32()
            if (name, instance) == ("ram", 0):
                if version != 4:
                    raise ValueError("RAM version %d" % version)
                state = {"blocks": {}, "pages": 0, "zero_pages": 0, "first_bytes": [], "block": None}
                readers[last_id] = (name, lambda s=state: read_ram(w, page_size, s), state)
            else:
                values = {}
                readers[last_id] = (name, lambda d=devices[(name, instance)], v=values: read_fields(w, d, v), values)
            readers[last_id][1]()
        elif kind in (0x02, 0x03):
            last_id = w.be32()
            readers[last_id][1]()
        elif kind == 0x08:
            command, length = w.be16(), w.be16()
            if command != 0x0B or length != 0:
                raise ValueError("unknown command 0x%x" % command)
        elif kind == 0x7E:
            if w.be32() != last_id:
                raise ValueError("footer does not match section %d" % last_id)
        else:
            raise ValueError("unknown section type %d at 0x%x" % (kind, w.pos - 1))
    for section_id, (name, _, state) in readers.items():
        state.pop("block", None)
        summary["sections"]["%s (%d)" % (name, section_id)] = state
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except Exception as error:  # noqa: BLE001 - report any failure as the test's message
        print("stream_walk: %s" % error, file=sys.stderr)
        sys.exit(1)
