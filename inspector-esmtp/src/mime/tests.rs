//! Scanner-level tests: whole messages in, events out.

use super::*;

fn scan_with(limits: MimeLimits, msg: &[u8]) -> Vec<MimeEvent> {
    let mut s = MimeScanner::new(limits);
    let mut ev = Vec::new();
    s.feed(msg, &mut ev);
    s.finish(&mut ev);
    ev
}

fn scan(msg: &str) -> Vec<MimeEvent> {
    scan_with(MimeLimits::default(), msg.as_bytes())
}

fn parts(ev: &[MimeEvent]) -> Vec<PartInfo> {
    ev.iter()
        .filter_map(|e| match e {
            MimeEvent::Part(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

fn header_lines(ev: &[MimeEvent]) -> Vec<usize> {
    ev.iter()
        .filter_map(|e| match e {
            MimeEvent::HeaderLine { len } => Some(*len),
            _ => None,
        })
        .collect()
}

fn body_lines(ev: &[MimeEvent]) -> Vec<usize> {
    ev.iter()
        .filter_map(|e| match e {
            MimeEvent::BodyLine { len } => Some(*len),
            _ => None,
        })
        .collect()
}

fn count(ev: &[MimeEvent], f: impl Fn(&MimeEvent) -> bool) -> usize {
    ev.iter().filter(|e| f(e)).count()
}

fn crlf(s: &str) -> String {
    s.replace('\n', "\r\n")
}

/// (content_type, filename, filename_len, encoding keyword, depth)
fn summary(p: &PartInfo) -> (String, Option<String>, Option<usize>, &'static str, usize) {
    (
        p.content_type.clone(),
        p.filename.clone(),
        p.filename_len,
        p.encoding.keyword(),
        p.depth,
    )
}

#[test]
fn simple_message_events() {
    let msg = crlf("From: a@example.com\nTo: b@example.com\nSubject: hi\n\nline one\n\nlast\n");
    let ev = scan(&msg);
    assert_eq!(
        ev,
        vec![
            MimeEvent::HeaderLine { len: 19 },
            MimeEvent::ToField,
            MimeEvent::HeaderLine { len: 17 },
            MimeEvent::HeaderLine { len: 11 },
            MimeEvent::HeaderEnd { len: 21 + 19 + 13 },
            MimeEvent::Part(PartInfo {
                content_type: "text/plain".into(),
                filename: None,
                filename_len: None,
                encoding: Encoding::SevenBit,
                depth: 0,
                truncated: false,
            }),
            MimeEvent::BodyLine { len: 8 },
            MimeEvent::BodyLine { len: 0 },
            MimeEvent::BodyLine { len: 4 },
            MimeEvent::BodyEnd { len: 10 + 2 + 6 },
        ]
    );
    // Header + empty line + body = size.
    assert_eq!(53 + 2 + 18, msg.len());
}

#[test]
fn crlf_and_lf_give_same_lines() {
    let lf = "To: x\nSubject: a\n  folded\n\nbody\n\n";
    let a = scan(lf);
    let b = scan(&crlf(lf));
    let strip = |ev: &[MimeEvent]| -> Vec<MimeEvent> {
        ev.iter()
            .filter(|e| !matches!(e, MimeEvent::HeaderEnd { .. } | MimeEvent::BodyEnd { .. }))
            .cloned()
            .collect()
    };
    assert_eq!(strip(&a), strip(&b));
    assert_eq!(header_lines(&a), vec![5, 10, 8]);
    assert!(a.contains(&MimeEvent::HeaderEnd { len: 26 }));
    assert!(b.contains(&MimeEvent::HeaderEnd { len: 29 }));
    assert!(a.contains(&MimeEvent::BodyEnd { len: 6 }));
    assert!(b.contains(&MimeEvent::BodyEnd { len: 8 }));
    // Mixed endings and a bare CR inside a line (content, counted).
    let ev = scan("A: b\r\nC: d\ne\rf: g\r\n\r\nx\ry\r\nz");
    assert_eq!(header_lines(&ev), vec![4, 4, 6]);
    assert_eq!(body_lines(&ev), vec![3, 1]);
    assert!(ev.contains(&MimeEvent::BodyEnd { len: 6 }));
}

#[test]
fn to_fields_counted() {
    let msg = "To: a\nto: b,\n c\nTO :d\nCc: e\nX-To: f\nReply-To: g\n To: folded-not-a-field\nTo\n\nTo: body\n";
    let ev = scan(msg);
    assert_eq!(count(&ev, |e| *e == MimeEvent::ToField), 3);
    assert_eq!(header_lines(&ev).len(), 9);
}

#[test]
fn folding_joins_values_but_lines_are_physical() {
    let msg = crlf(concat!(
        "Content-Type: application/pdf;\n",
        "\tname=\"report\n",
        " 2024.pdf\"\n",
        "Content-Transfer-Encoding:\n",
        "    base64\n",
        "\n",
        "AAAA\n"
    ));
    let ev = scan(&msg);
    assert_eq!(header_lines(&ev), vec![30, 13, 10, 26, 10]);
    let p = &parts(&ev)[0];
    assert_eq!(p.content_type, "application/pdf");
    // Unfolding removes the CRLF only, the leading space stays.
    assert_eq!(p.filename.as_deref(), Some("report 2024.pdf"));
    assert_eq!(p.filename_len, Some(15));
    assert_eq!(p.encoding, Encoding::Base64);
}

#[test]
fn long_lines_beyond_buffers() {
    let long = "x".repeat(200_000);
    let msg = format!(
        "Subject: {long}\r\nX-Long: a\r\n {long}\r\nContent-Type: text/plain; name=\"{long}\"\r\n\r\n{long}\r\n"
    );
    let limits = MimeLimits::default();
    let mut s = MimeScanner::new(limits);
    let mut ev = Vec::new();
    for chunk in msg.as_bytes().chunks(4093) {
        s.feed(chunk, &mut ev);
        assert!(s.heap_bytes() <= limits.memory_bound());
    }
    s.finish(&mut ev);
    assert_eq!(header_lines(&ev), vec![200_009, 9, 200_001, 200_033]);
    assert_eq!(body_lines(&ev), vec![200_000]);
    let p = &parts(&ev)[0];
    assert!(p.truncated);
    let n = p.filename_len.unwrap();
    assert!((8000..200_000).contains(&n), "{n}");
    assert_eq!(p.filename.as_ref().unwrap().len(), 1024);
}

#[test]
fn nested_multipart_filenames_and_encodings() {
    let msg = crlf(concat!(
        "From: a@b\n",
        "To: c@d\n",
        "MIME-Version: 1.0\n",
        "Content-Type: multipart/mixed; boundary=\"outer:b 1\"\n",
        "\n",
        "This is the preamble.\n",
        "--outer:b 1\n",
        "Content-Type: text/plain; charset=us-ascii\n",
        "\n",
        "hello\n",
        "--outer:b 1\n",
        "Content-Type: multipart/alternative; boundary=alt\n",
        "\n",
        "--alt\n",
        "Content-Type: text/html\n",
        "Content-Transfer-Encoding: quoted-printable\n",
        "\n",
        "<p>hi=3D</p>\n",
        "--alt\n",
        "Content-Type: multipart/related;\n",
        " boundary=rel\n",
        "\n",
        "--rel\n",
        "Content-Type: image/png; name=plain.png\n",
        "Content-Transfer-Encoding: base64\n",
        "\n",
        "iVBORw0KGgo=\n",
        "--rel\n",
        "Content-Type: application/octet-stream; name=\"=?UTF-8?B?w6lsw6h2ZS5leGU=?=\"\n",
        "Content-Disposition: attachment;\n",
        " filename*0*=UTF-8''%E2%82%AC%20;\n",
        " filename*1=\"long name\";\n",
        " filename*2*=%2Ebat\n",
        "Content-Transfer-Encoding: binary\n",
        "\n",
        "MZ\0\0\n",
        "--rel--\n",
        "--alt--\n",
        "--outer:b 1\n",
        "Content-Type: application/msword; name=\"quoted name.doc\"\n",
        "Content-Disposition: attachment; filename==?iso-8859-1?Q?caf=E9_menu.doc?=\n",
        "Content-Transfer-Encoding: 8bit\n",
        "\n",
        "x\n",
        "--outer:b 1\n",
        "Content-Type: text/plain\n",
        "Content-Disposition: inline; filename*=iso-8859-1'fr'r%E9sum%E9.txt\n",
        "Content-Transfer-Encoding: x-uuencode\n",
        "\n",
        "begin 644 x\n",
        "--outer:b 1\n",
        "Content-Type: application/x-thing; name=\"=?utf-8?q?a_b=2Eexe?=\"\n",
        "Content-Transfer-Encoding: 7BIT\n",
        "\n",
        "--outer:b 1--\n",
        "epilogue\n",
        "--alt\n",
    ));
    let ev = scan(&msg);
    let got: Vec<_> = parts(&ev).iter().map(summary).collect();
    let s = |x: &str| Some(x.to_string());
    assert_eq!(
        got,
        vec![
            ("multipart/mixed".into(), None, None, "7bit", 0),
            ("text/plain".into(), None, None, "7bit", 1),
            ("multipart/alternative".into(), None, None, "7bit", 1),
            ("text/html".into(), None, None, "quoted-printable", 2),
            ("multipart/related".into(), None, None, "7bit", 2),
            ("image/png".into(), s("plain.png"), Some(9), "base64", 3),
            (
                "application/octet-stream".into(),
                s("€ long name.bat"),
                Some(17),
                "binary",
                3
            ),
            (
                "application/msword".into(),
                s("café menu.doc"),
                Some(13),
                "8bit",
                1
            ),
            ("text/plain".into(), s("résumé.txt"), Some(10), "others", 1),
            (
                "application/x-thing".into(),
                s("a b.exe"),
                Some(7),
                "7bit",
                1
            ),
        ]
    );
    assert_eq!(parts(&ev)[8].encoding, Encoding::Other("x-uuencode".into()));
    assert_eq!(count(&ev, |e| *e == MimeEvent::ToField), 1);
    assert_eq!(header_lines(&ev).len(), 4);
    // Every line after the top-level header is a body line.
    assert_eq!(body_lines(&ev).len(), msg.matches("\r\n").count() - 5);
    assert!(parts(&ev).iter().all(|p| !p.truncated));
}

#[test]
fn outer_boundary_closes_inner_and_cuts_headers() {
    let msg = concat!(
        "Content-Type: multipart/mixed; boundary=o\n",
        "\n",
        "--o\n",
        "Content-Type: multipart/mixed; boundary=i\n",
        "\n",
        "--i\n",
        "Content-Type: application/zip; name=a.zip\n",
        "--o\n", // cuts a.zip's header and closes "i"
        "Content-Type: text/plain; name=b.txt\n",
        "\n",
        "--i\n", // no longer a boundary
        "Content-Type: application/x-not-a-part\n",
        "\n",
        "--o--  \t\n",
        "--o\n", // epilogue: frame closed
        "Content-Type: application/x-nope\n",
    );
    let got: Vec<_> = parts(&scan(msg)).iter().map(summary).collect();
    let s = |x: &str| Some(x.to_string());
    assert_eq!(
        got,
        vec![
            ("multipart/mixed".into(), None, None, "7bit", 0),
            ("multipart/mixed".into(), None, None, "7bit", 1),
            ("application/zip".into(), s("a.zip"), Some(5), "7bit", 2),
            ("text/plain".into(), s("b.txt"), Some(5), "7bit", 1),
        ]
    );
}

#[test]
fn message_rfc822_and_digest() {
    let msg = concat!(
        "Content-Type: multipart/digest; boundary=d\n",
        "\n",
        "--d\n",
        "\n",
        "Subject: inner\n",
        "Content-Type: multipart/mixed; boundary=in\n",
        "\n",
        "--in\n",
        "Content-Type: application/pdf; name=inner.pdf\n",
        "\n",
        "%PDF\n",
        "--in--\n",
        "--d\n",
        "Content-Type: message/rfc822\n",
        "Content-Transfer-Encoding: base64\n",
        "\n",
        "U3ViamVjdDogeAoK\n",
        "--d--\n",
    );
    let got: Vec<_> = parts(&scan(msg)).iter().map(summary).collect();
    assert_eq!(
        got,
        vec![
            ("multipart/digest".into(), None, None, "7bit", 0),
            ("message/rfc822".into(), None, None, "7bit", 1),
            ("multipart/mixed".into(), None, None, "7bit", 2),
            (
                "application/pdf".into(),
                Some("inner.pdf".into()),
                Some(9),
                "7bit",
                3
            ),
            // base64-encoded message: opaque.
            ("message/rfc822".into(), None, None, "base64", 1),
        ]
    );
}

#[test]
fn depth_limit() {
    let mut msg = String::new();
    for i in 0..40 {
        msg.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=b{i}\n\n--b{i}\n"
        ));
    }
    msg.push_str("Content-Type: application/x-deep; name=deep.exe\n\nx\n");
    let limits = MimeLimits {
        max_depth: 3,
        ..MimeLimits::default()
    };
    let ev = scan_with(limits, msg.as_bytes());
    let ps = parts(&ev);
    assert_eq!(ps.len(), 4);
    assert_eq!(
        ps.iter().map(|p| p.depth).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    assert!(ev.contains(&MimeEvent::DepthExceeded { depth: 3 }));
    // Lines are still all counted.
    assert_eq!(body_lines(&ev).len(), msg.matches('\n').count() - 2);
    // Default depth 16: the .exe at depth 40 is out of reach, 17 parts.
    let ev = scan(&msg);
    assert_eq!(parts(&ev).len(), 17);
    assert!(ev.contains(&MimeEvent::DepthExceeded { depth: 16 }));
}

#[test]
fn malformed_headers() {
    // No colon, NUL bytes, continuation without a field, an unterminated
    // quote, a multipart without boundary: no panic, sensible results.
    let msg = b"\0\0garbage line without colon\n \tcontinuation\nTo\0: x\nContent-Type: multipart/mixed\nContent-Disposition: attachment; filename=\"evil.exe\nX: \0\0\n\n--\n\0\n";
    let ev = scan_with(MimeLimits::default(), msg);
    assert_eq!(header_lines(&ev), vec![28, 14, 6, 29, 51, 5]);
    assert_eq!(count(&ev, |e| *e == MimeEvent::ToField), 0);
    let ps = parts(&ev);
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0].content_type, "multipart/mixed");
    assert_eq!(ps[0].filename.as_deref(), Some("evil.exe"));
    assert_eq!(body_lines(&ev), vec![2, 1]);

    // Invalid content types fall back to the default; odd params are skipped.
    let ev = scan("Content-Type: application\nContent-Disposition: ;;filename\n\n");
    let p = &parts(&ev)[0];
    assert_eq!(
        (p.content_type.as_str(), p.filename.as_deref()),
        ("text/plain", None)
    );

    // Duplicates: the first field wins.
    let ev = scan("Content-Type: image/gif; name=a.gif\nContent-Type: text/plain\n\n");
    assert_eq!(parts(&ev)[0].filename.as_deref(), Some("a.gif"));

    // Header never ends; empty message; only an empty line.
    let ev = scan("Subject: x\r\nContent-Type: image/png");
    assert_eq!(header_lines(&ev), vec![10, 23]);
    assert!(ev.contains(&MimeEvent::HeaderEnd { len: 35 }));
    assert_eq!(parts(&ev)[0].content_type, "image/png");
    assert_eq!(ev.last(), Some(&MimeEvent::BodyEnd { len: 0 }));
    let ev = scan("");
    assert_eq!(ev.len(), 3);
    assert_eq!(ev[0], MimeEvent::HeaderEnd { len: 0 });
    let ev = scan("\r\n");
    assert_eq!(ev[0], MimeEvent::HeaderEnd { len: 0 });
    assert_eq!(ev.last(), Some(&MimeEvent::BodyEnd { len: 0 }));

    // A part header cut by the end of the message is still reported.
    let ev = scan(
        "Content-Type: multipart/mixed; boundary=x\n\n--x\nContent-Type: application/x-cut; name=c.exe",
    );
    let ps = parts(&ev);
    assert_eq!(ps[1].filename.as_deref(), Some("c.exe"));
    assert_eq!(ps[1].depth, 1);
}

#[test]
fn all_encodings() {
    for (cte, want) in [
        ("7bit", Encoding::SevenBit),
        ("8BIT", Encoding::EightBit),
        ("Binary", Encoding::Binary),
        ("base64", Encoding::Base64),
        ("quoted-printable", Encoding::QuotedPrintable),
        ("x-gzip64 (c)", Encoding::Other("x-gzip64".into())),
    ] {
        let ev = scan(&format!("Content-Transfer-Encoding: {cte}\n\nx\n"));
        assert_eq!(parts(&ev)[0].encoding, want, "{cte}");
    }
    assert_eq!(parts(&scan("\n"))[0].encoding, Encoding::SevenBit);
}

fn corpus() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = vec![
        crlf(concat!(
            "To: a\nTo: b\n c\nContent-Type: multipart/mixed; boundary=\"==b==\"\n\n",
            "pre\n--==b==\nContent-Type: text/plain\n\nhi\r\n--==b==\n",
            "Content-Type: application/pdf; name*0*=utf-8''%C3%A9; name*1=x.pdf\n",
            "Content-Transfer-Encoding: base64\n\nAAAA\n--==b==--\nepi\n"
        ))
        .into_bytes(),
        b"A: b\r\r\n\r\n\r\rx\r\n\r".to_vec(),
        b"Content-Type: multipart/mixed; boundary=q\n\n--q\nContent-Disposition: attachment; filename=\"=?utf-8?B?w6k=?=\"\n\n--q--   \n".to_vec(),
        b"\n\n\n".to_vec(),
        b"no header end".to_vec(),
        b"\r".to_vec(),
    ];
    let mut big = String::from("Content-Type: multipart/mixed; boundary=z\r\n\r\n");
    for i in 0..5 {
        big.push_str(&format!(
            "--z \r\nContent-Disposition: attachment;\r\n filename*={i}'x'{}\r\n\r\n{}\r\n",
            "%41".repeat(50),
            "y".repeat(300)
        ));
    }
    big.push_str("--z--");
    v.push(big.into_bytes());
    v
}

#[test]
fn split_invariance() {
    let limits = MimeLimits {
        max_header_value: 256,
        max_boundary_len: 8,
        ..MimeLimits::default()
    };
    for msg in corpus() {
        let whole = scan_with(limits, &msg);
        // Byte by byte.
        let mut s = MimeScanner::new(limits);
        let mut ev = Vec::new();
        for b in &msg {
            s.feed(std::slice::from_ref(b), &mut ev);
        }
        s.finish(&mut ev);
        assert_eq!(
            ev,
            whole,
            "byte by byte: {:?}",
            String::from_utf8_lossy(&msg)
        );
        // Every two-piece split, and fixed chunk sizes.
        for cut in 0..=msg.len() {
            let mut s = MimeScanner::new(limits);
            let mut ev = Vec::new();
            s.feed(&msg[..cut], &mut ev);
            s.feed(&[], &mut ev);
            s.feed(&msg[cut..], &mut ev);
            s.finish(&mut ev);
            assert_eq!(ev, whole, "cut at {cut}");
        }
        for size in [2, 3, 5, 7, 64] {
            let mut s = MimeScanner::new(limits);
            let mut ev = Vec::new();
            for c in msg.chunks(size) {
                s.feed(c, &mut ev);
            }
            s.finish(&mut ev);
            assert_eq!(ev, whole, "chunks of {size}");
        }
    }
}

#[test]
fn finish_resets_for_next_message() {
    let msg = corpus().remove(0);
    let mut s = MimeScanner::new(MimeLimits::default());
    let mut a = Vec::new();
    s.feed(&msg, &mut a);
    s.finish(&mut a);
    let mut b = Vec::new();
    s.feed(&msg, &mut b);
    s.finish(&mut b);
    assert_eq!(a, b);
    assert_eq!(s.heap_bytes(), 0);
}

#[test]
fn memory_bound_holds_under_adversarial_input() {
    const { assert!(MimeScanner::MAX_MEMORY < 1 << 20) };
    println!(
        "MAX_MEMORY {} default bound {}",
        MimeScanner::MAX_MEMORY,
        MimeLimits::default().memory_bound()
    );
    assert!(
        MimeLimits::default().memory_bound() < 64 * 1024,
        "{}",
        MimeLimits::default().memory_bound()
    );
    // Limits are clamped.
    let l = MimeScanner::new(MimeLimits {
        max_depth: usize::MAX,
        max_header_value: 0,
        max_boundary_len: usize::MAX,
        max_filename: usize::MAX,
    })
    .limits();
    assert!(l.memory_bound() <= MimeScanner::MAX_MEMORY);
    assert_eq!((l.max_depth, l.max_header_value), (64, 256));

    for limits in [MimeLimits::default(), l] {
        let bmax = limits.max_boundary_len;
        let mut msg = Vec::new();
        for i in 0..100 {
            let b = format!("{i:0>bmax$}");
            msg.extend_from_slice(
                format!(
                    "Content-Type: multipart/mixed; name*=utf-8''{}; boundary=\"{b}\"\r\nContent-Disposition: a; filename=\"{}\"\r\nContent-Transfer-Encoding: {}\r\n\r\n--{b}\r\n",
                    "%FF".repeat(30_000),
                    "\u{FFFD}".repeat(30_000),
                    "q".repeat(70_000),
                )
                .as_bytes(),
            );
        }
        let bound = limits.memory_bound();
        let mut s = MimeScanner::new(limits);
        let mut ev = Vec::new();
        let mut peak = 0;
        for c in msg.chunks(1000) {
            s.feed(c, &mut ev);
            peak = peak.max(s.heap_bytes());
            ev.clear();
        }
        assert!(peak <= bound, "{peak} > {bound}");
        assert!(peak > 0);
    }
}

#[test]
fn token_soup_is_split_invariant_and_bounded() {
    const TOKENS: &[&str] = &[
        "\r\n",
        "\n",
        "\r",
        " ",
        "\t",
        "\0",
        ":",
        ";",
        "\"",
        "\\",
        "(",
        ")",
        "--",
        "--a",
        "--a--",
        "--bb",
        "To: x",
        "Content-Type: multipart/mixed; boundary=a",
        "Content-Type: multipart/digest; boundary=\"bb\"",
        "Content-Type: message/rfc822",
        "content-type: application/x; name=",
        "Content-Disposition: attachment; filename*0*=utf-8''%41%4",
        "; filename*1=\"b",
        "; filename=",
        "Content-Transfer-Encoding: base64",
        "=?utf-8?B?w6k",
        "=?iso-8859-1?Q?=E9_",
        "?=",
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    ];
    let limits = MimeLimits {
        max_depth: 4,
        max_header_value: 256,
        max_boundary_len: 4,
        max_filename: 16,
    };
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rand = move |n: usize| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((seed >> 33) as usize) % n
    };
    for _ in 0..300 {
        let mut msg = Vec::new();
        for _ in 0..rand(120) {
            msg.extend_from_slice(TOKENS[rand(TOKENS.len())].as_bytes());
        }
        let whole = scan_with(limits, &msg);
        assert!(matches!(whole.last(), Some(MimeEvent::BodyEnd { .. })));
        let mut s = MimeScanner::new(limits);
        let mut ev = Vec::new();
        let mut rest = &msg[..];
        while !rest.is_empty() {
            let n = rand(rest.len().min(16)) + 1;
            s.feed(&rest[..n], &mut ev);
            assert!(s.heap_bytes() <= limits.memory_bound());
            rest = &rest[n..];
        }
        s.finish(&mut ev);
        assert_eq!(ev, whole, "{:?}", String::from_utf8_lossy(&msg));
        // Header + body sizes account for every byte.
        let hdr = whole.iter().find_map(|e| match e {
            MimeEvent::HeaderEnd { len } => Some(*len),
            _ => None,
        });
        let Some(MimeEvent::BodyEnd { len: body }) = whole.last() else {
            unreachable!()
        };
        let sep = msg.len() - hdr.unwrap() - body;
        assert!(sep <= 2, "empty line is CRLF, LF or absent");
    }
}

/// `quiet_body_lines(q)` leaves out exactly the `BodyLine` events of lines
/// of at most `q` bytes, and passing lines with `skip_quiet` before each
/// fed line (as the session does) changes nothing else, in any split.
#[test]
fn quiet_lines_are_skipped_without_changing_the_events() {
    let mut messages = corpus();
    messages.push(
        format!(
            "Content-Type: multipart/mixed; boundary=z\r\n\r\npre\r\n--z\r\n\r\nline\r\n\
             -dash\r\n--zz\r\nbare\rcr\r\n{}\r\n--z--\r\nepi\r\n",
            "y".repeat(40)
        )
        .into_bytes(),
    );
    messages.push(format!("A: b\r\n\r\n.\r\n-\r\n{}\n\n", "x".repeat(20)).into_bytes());
    let limits = MimeLimits::default();
    let mut skipped_any = false;
    for msg in &messages {
        let all = scan_with(limits, msg);
        for q in [0, 2, 3, 4, 10, 39, 40, 41, 299, 300, usize::MAX] {
            let want: Vec<MimeEvent> = all
                .iter()
                .filter(|e| !matches!(e, MimeEvent::BodyLine { len } if *len <= q))
                .cloned()
                .collect();
            for size in [1, 2, 7, 64, msg.len().max(1)] {
                let mut s = MimeScanner::new(limits);
                s.quiet_body_lines(q);
                let mut ev = Vec::new();
                for chunk in msg.chunks(size) {
                    let mut rest = chunk;
                    while !rest.is_empty() {
                        let n = s.skip_quiet(rest);
                        skipped_any |= n > 0;
                        rest = &rest[n..];
                        let line = memchr::memchr(b'\n', rest).map_or(rest.len(), |lf| lf + 1);
                        s.feed(&rest[..line], &mut ev);
                        rest = &rest[line..];
                    }
                }
                s.finish(&mut ev);
                assert_eq!(
                    ev,
                    want,
                    "quiet {q}, chunks of {size}: {:?}",
                    String::from_utf8_lossy(msg)
                );
            }
        }
    }
    assert!(skipped_any, "the bulk path ran");
}
