//! Messages of varied content for the end-to-end tests and benchmarks:
//! each has a unique `X-Marker: mN` header, so a delivered copy can be
//! matched to what was sent.

/// Messages of varied content, each with a unique marker.
pub fn messages() -> Vec<Vec<u8>> {
    varied(0, true)
}

/// Five kinds of content (the last one 5 MB, if `big`), markers from `base`.
pub fn varied(base: usize, big: bool) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let header = |n: usize, extra: &str| {
        let n = base + n;
        format!(
            "From: a@client.test\r\nTo: b@server.test\r\nSubject: message {n}\r\nX-Marker: m{n}\r\n{extra}\r\n"
        )
        .into_bytes()
    };
    // 8-bit text.
    let mut m = header(
        0,
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n",
    );
    m.extend_from_slice("Grüße, ça va? Привет — 8-bit body\r\n".as_bytes());
    m.extend_from_slice(b"raw bytes \xe9\xff\x80 end\r\n");
    out.push(m);
    // A 998-octet line, the longest RFC 5322 allows.
    let mut m = header(1, "");
    m.extend_from_slice(&[b'x'; 998]);
    m.extend_from_slice(b"\r\nafter the long line\r\n");
    out.push(m);
    // Dot-stuffing cases.
    let mut m = header(2, "");
    m.extend_from_slice(b".\r\n..\r\n.leading dot\r\n...three\r\n. \r\nend\r\n");
    out.push(m);
    // A MIME attachment.
    let mut m = header(
        3,
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n",
    );
    m.extend_from_slice(b"--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b1\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"data.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n");
    for i in 0..200u32 {
        m.extend_from_slice(
            format!("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo{i:08}AAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n")
                .as_bytes(),
        );
    }
    m.extend_from_slice(b"--b1--\r\n");
    out.push(m);
    if !big {
        return out;
    }
    // A 5 MB body.
    let mut m = header(4, "");
    let mut line = 0u64;
    while m.len() < 5 * 1024 * 1024 {
        m.extend_from_slice(
            format!("{line:010} the quick brown fox jumps over the lazy dog 0123456789\r\n")
                .as_bytes(),
        );
        line += 1;
    }
    out.push(m);
    out
}
