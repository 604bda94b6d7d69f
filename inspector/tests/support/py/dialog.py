# Plays a conversation: each step's bytes are sent, then one complete
# reply (or the close) is read. Prints one line per step: the reply, or
# `CLOSED`, as JSON strings.
# python3 dialog.py SERVER STEPS.json
import json, socket, sys
steps = json.loads(open(sys.argv[2]).read())
s = socket.create_connection((sys.argv[1], 25), timeout=30)
buf = b""
def reply():
    global buf
    while True:
        lines = buf.split(b"\r\n")
        for i, l in enumerate(lines[:-1]):
            # The last line of a reply: no `-` after the code (a compat
            # masked banner has `*` there).
            if len(l) >= 3 and l[3:4] != b"-":
                out = b"\r\n".join(lines[:i + 1])
                buf = b"\r\n".join(lines[i + 1:])
                return out.decode("latin-1")
        try:
            d = s.recv(65536)
        except ConnectionResetError:
            d = b""
        if not d:
            return "CLOSED"
        buf += d
print(json.dumps(reply()))
for step in steps:
    try:
        s.sendall(step.encode("latin-1"))
    except OSError:
        print(json.dumps("CLOSED"))
        break
    r = reply()
    print(json.dumps(r))
    if r == "CLOSED":
        break
