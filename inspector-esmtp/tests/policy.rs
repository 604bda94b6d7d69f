//! The policy language as the daemon loads it: the `[esmtp]` table of a TOML
//! file. Errors name the field and carry the span of the offending value.

use inspector_esmtp::PolicyStats;
use inspector_esmtp::policy::{EsmtpPolicy, FieldError, Mode};

/// The rest of a policy file (exemptions, servers, timeouts) is the
/// daemon's, validated by its own tests.
fn load(text: &str) -> Result<EsmtpPolicy, String> {
    EsmtpPolicy::from_toml(text).map_err(|e| e.to_string())
}

fn field_error(text: &str) -> FieldError {
    EsmtpPolicy::from_toml(text).unwrap_err()
}

fn shipped(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../policies/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn default_toml_is_exactly_the_default_esmtp_map() {
    let file = load(&shipped("default.toml")).unwrap();
    let builtin = EsmtpPolicy::default();
    assert_eq!(format!("{file:?}"), format!("{builtin:?}"));
    assert_eq!(builtin.mode, Mode::Modern);
    assert!(builtin.mask_banner && builtin.allow_tls.is_none());
    assert!(builtin.mail_relay.is_none() && builtin.special_character.is_none());
    let rules: Vec<String> = builtin
        .rules
        .iter()
        .map(|r| format!("{} -> {}", r.text(), r.actions))
        .collect();
    assert_eq!(
        rules,
        [
            "match cmd line length gt 512 -> drop-connection log",
            "match cmd RCPT count gt 100 -> drop-connection log",
            "match body line length gt 998 -> log",
            "match header line length gt 998 -> drop-connection log",
            "match sender-address length gt 320 -> drop-connection log",
            "match MIME filename length gt 255 -> drop-connection log",
            "match ehlo-reply-parameter others -> mask",
        ]
    );
    // No [esmtp] table: the same.
    assert_eq!(format!("{:?}", load("").unwrap()), format!("{builtin:?}"));
}

#[test]
fn compat_and_exchange_presets_compile() {
    let compat = load(&shipped("compat.toml")).unwrap();
    assert_eq!(compat.mode, Mode::Compat);
    assert_eq!(compat.rules.len(), 7);
    let exchange = load(&shipped("exchange.toml")).unwrap();
    for verb in ["X-LINK2STATE", "XEXCH50", "X-EXPS"] {
        assert!(exchange.allows_verb(verb), "{verb}");
        assert!(exchange.is_known_keyword(verb), "{verb}");
    }
    assert!(!EsmtpPolicy::default().allows_verb("XEXCH50"));
    assert!(load(&shipped("esa-exempt.toml")).is_ok());
}

#[test]
fn errors_carry_the_field_and_the_span_of_the_value() {
    let text = "[esmtp]\nmode = \"modern\"\n\n[[esmtp.match]]\nmatch = \"cmd line length gt 512\"\naction = \"log\"\n\n\
                [[esmtp.match]]\nmatch = \"cmdd verb VRFY\"\naction = \"mask\"\n";
    let err = field_error(text);
    assert_eq!(err.field, "esmtp.match[1].match");
    assert!(
        err.message.starts_with("unknown criterion `cmdd`"),
        "{}",
        err.message
    );
    assert_eq!(&text[err.span.clone().unwrap()], "\"cmdd verb VRFY\"");

    let text =
        "[esmtp]\n[[esmtp.match]]\nmatch = \"header line length gt 998\"\naction = \"mask log\"\n";
    let err = field_error(text);
    assert_eq!(err.field, "esmtp.match[0].action");
    assert!(
        err.message
            .contains("`mask` is valid only for `ehlo-reply-parameter` and `cmd verb`")
    );
    assert_eq!(&text[err.span.unwrap()], "\"mask log\"");
}

#[test]
fn invalid_policies_are_rejected_with_a_clear_message() {
    for (body, want) in [
        (
            "[[esmtp.match]]\nmatch = \"sender-address regex a(b\"\naction = \"log\"",
            "esmtp.match[0].match: bad regular expression `a(b`",
        ),
        (
            "[[esmtp.match]]\nmatch = \"body length gt 5\"\naction = \"rate-limit 5\"",
            "`rate-limit` is valid only for `cmd verb`",
        ),
        (
            "[[esmtp.match]]\nmatch = \"body length gt 5\"\naction = \"drop\"",
            "unknown action `drop`",
        ),
        (
            "[[esmtp.match]]\nmatch = \"body length gt 5\"",
            "missing field `action`",
        ),
        (
            "[[esmtp.match]]\nmatch = \"body length gt 5\"\naction = \"log\"\nactoin = \"x\"",
            "unknown field `actoin`",
        ),
        ("mask-baner = true", "unknown field `mask-baner`"),
        ("mode = \"legacy\"", "unknown variant `legacy`"),
        (
            "mode = \"compat\"\nbanner-name = \"mx\"",
            "esmtp.banner-name: only in modern mode",
        ),
        (
            "mode = \"compat\"\nreject-excess-recipients = true",
            "only in modern mode",
        ),
        (
            "banner-name = \"two words\"",
            "printable ASCII characters without spaces",
        ),
        (
            "allow-tls = \"yes\"",
            "esmtp.allow-tls: expected true, false or \"log\"",
        ),
        ("special-character = \"mask\"", "`mask` is not valid here"),
        (
            "mail-relay = { domain = \"bad domain\", action = \"log\" }",
            "`bad domain` is not a domain name",
        ),
        (
            "mail-relay = { domain = \"x.example\", action = \"log\", extra = 1 }",
            "unknown field `extra`",
        ),
        (
            "allow-verbs = [\"X/Y\"]",
            "esmtp.allow-verbs[0]: `X/Y` is not an SMTP verb",
        ),
    ] {
        let err = load(&format!("[esmtp]\n{body}\n")).unwrap_err();
        assert!(err.contains(want), "{body:?}: {err}");
    }
}

#[test]
fn every_parameter_and_its_show_line() {
    let p = load(
        "[esmtp]\nname = \"mx_policy\"\nallow-tls = \"log\"\nspecial-character = \"drop-connection log\"\n\
         mail-relay = { domain = \"example.com\", action = \"log\" }\nallow-verbs = [\"xfoo\"]\n\
         [[esmtp.match]]\nmatch = \"not cmd verb NOOP\"\naction = \"rate-limit 10 log\"\n",
    )
    .unwrap();
    assert!(p.allows_verb("XFOO") && p.allows_verb("STARTTLS"));
    let view = PolicyStats::new(&p).render(&p);
    assert_eq!(
        view,
        "Inspect: esmtp mx_policy, packet 0, drop 0, reset-drop 0\n\
         \x20 mask-banner, count 0\n\
         \x20 mail-relay example.com action log, count 0\n\
         \x20 special-character action drop-connection log, count 0\n\
         \x20 allow-tls action log, count 0\n\
         \x20 match not cmd verb NOOP             rate-limit 10 log, packet 0\n"
    );
}

#[test]
fn criteria_list_the_show_lines_with_their_actions() {
    let p = load(
        "[esmtp]\nallow-tls = \"log\"\nmail-relay = { domain = \"example.com\", action = \"log\" }\n\
         [[esmtp.match]]\nmatch = \"cmd RCPT count gt 100\"\naction = \"drop-connection log\"\n",
    )
    .unwrap();
    let stats = PolicyStats::new(&p);
    let rows: Vec<(String, String, u64)> = stats
        .criteria(&p)
        .into_iter()
        .map(|c| (c.criterion, c.action, c.hits))
        .collect();
    let row = |c: &str, a: &str| (c.to_string(), a.to_string(), 0);
    assert_eq!(
        rows,
        [
            row("mask-banner", "mask"),
            row("mail-relay example.com", "log"),
            row("allow-tls", "allow log"),
            row("match cmd RCPT count gt 100", "drop-connection log"),
        ]
    );
    assert_eq!(stats.totals(), (0, 0, 0));
}
