# A raw SMTP client for the differential tests: plays the steps of one
# case, byte for byte, and prints what it saw as one JSON object.
#
#   raw_client.py SERVER CASE.json
#
# CASE.json: {"steps": [...], "rcvbuf": N (optional)}. Each step is one of
#   {"send": TEXT}                  bytes (latin-1), sent at once
#   {"send": TEXT, "times": N}      TEXT repeated N times
#   {"reply": true}                 wait for one complete reply (or the close)
#   {"trickle": TEXT, "every": S, "for": S}
#                                   one byte every S seconds, for at most S
#                                   seconds or until the connection ends
#   {"stream": TEXT, "for": S}      send TEXT over and over for S seconds
#                                   without reading (a client that keeps
#                                   sending); stops quietly when the peer
#                                   closes
#   {"shutdown": true}              half-close (FIN), keep reading
#   {"sleep": S}
# After the last step it reads until the connection ends (or "linger"
# seconds, default 15).
#
# Output: {"port": local port, "replies": [one entry per "reply" step and
# the greeting], "received": every byte received (latin-1), "end": "EOF",
# "RST" or "OPEN", "end_at": seconds from the connection to its end (null
# if still open), "end_after": seconds from the last byte sent to the end}.
import json
import socket
import sys
import time

case = json.load(open(sys.argv[2]))
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
if "rcvbuf" in case:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, case["rcvbuf"])
s.settimeout(30)
s.connect((sys.argv[1], 25))
t0 = time.monotonic()
port = s.getsockname()[1]
received = b""
pending = b""
end = None
end_at = None
last_sent = time.monotonic()
replies = []


def ended(kind):
    global end, end_at
    if not end:
        end, end_at = kind, time.monotonic()


def take(d):
    global received, pending
    received += d
    pending += d


def read_some(timeout):
    """Reads what arrives within `timeout`; records the end of the stream."""
    if end:
        return False
    s.settimeout(timeout)
    try:
        d = s.recv(65536)
    except socket.timeout:
        return False
    except ConnectionResetError:
        ended("RST")
        return False
    if not d:
        ended("EOF")
        return False
    take(d)
    return True


def one_reply(timeout=15):
    """The next complete reply (every line of it), or CLOSED/TIMEOUT."""
    global pending
    deadline = time.monotonic() + timeout
    while True:
        lines = pending.split(b"\r\n")
        for i, l in enumerate(lines[:-1]):
            if len(l) >= 3 and l[3:4] != b"-":
                pending = b"\r\n".join(lines[i + 1:])
                return b"\r\n".join(lines[: i + 1]).decode("latin-1")
        left = deadline - time.monotonic()
        if end or left <= 0:
            return "CLOSED" if end else "TIMEOUT"
        read_some(left)


def send(data):
    global last_sent
    if end:
        return False
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        ended("RST")
        return False
    last_sent = time.monotonic()
    return True


replies.append(one_reply())
for step in case["steps"]:
    if "send" in step:
        send(step["send"].encode("latin-1") * step.get("times", 1))
    elif "reply" in step:
        replies.append(one_reply())
    elif "trickle" in step:
        data = step["trickle"].encode("latin-1")
        stop = time.monotonic() + step["for"]
        i = 0
        while time.monotonic() < stop and not end:
            if not send(data[i % len(data):i % len(data) + 1]):
                break
            i += 1
            read_some(step["every"])
    elif "stream" in step:
        data = step["stream"].encode("latin-1")
        s.setblocking(False)
        stop = time.monotonic() + step["for"]
        while time.monotonic() < stop and not end:
            try:
                s.send(data)
                last_sent = time.monotonic()
            except BlockingIOError:
                time.sleep(0.01)
            except (BrokenPipeError, ConnectionResetError):
                ended("RST")
        s.setblocking(True)
    elif "shutdown" in step:
        s.shutdown(socket.SHUT_WR)
    elif "sleep" in step:
        time.sleep(step["sleep"])
deadline = time.monotonic() + case.get("linger", 15)
while not end and time.monotonic() < deadline:
    read_some(deadline - time.monotonic())
print(json.dumps({
    "port": port,
    "replies": replies,
    "received": received.decode("latin-1"),
    "end": end or "OPEN",
    "end_after": round((end_at or time.monotonic()) - last_sent, 3),
    "end_at": round(end_at - t0, 3) if end_at else None,
}))
