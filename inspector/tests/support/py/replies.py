# What the clients here share: reading a reply's first line.
def first_line(s):
    """The first line of what the server sends on socket s ("" if it closes)."""
    got = b""
    while b"\n" not in got:
        d = s.recv(1000)
        if not d:
            break
        got += d
    return got.split(b"\r\n")[0].decode(errors="replace")
