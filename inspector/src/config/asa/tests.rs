use std::{net::IpAddr, path::Path, time::Duration};

use super::*;
use crate::config::Policy;

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/asa")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn import_with(text: &str, addresses: AddressSide) -> Imported {
    import(
        text,
        &Options {
            addresses,
            source: "test.cfg".into(),
            ..Options::default()
        },
    )
}

/// The translation, which `policy check` must accept.
fn checked(imported: &Imported) -> Policy {
    Policy::parse(Path::new("imported.toml"), &imported.toml)
        .unwrap_or_else(|e| panic!("{e}\n{}", imported.toml))
}

fn messages(imported: &Imported, level: Level) -> Vec<String> {
    imported
        .diagnostics
        .iter()
        .filter(|d| d.level == level)
        .map(ToString::to_string)
        .collect()
}

fn has(list: &[String], line: usize, needle: &str) -> bool {
    list.iter()
        .any(|m| m.starts_with(&format!("line {line}: ")) && m.contains(needle))
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The first document's configuration, as it prints it (no indentation, a
/// bare address where the firewall wants `host`): the mail gateway exempt
/// both ways, its published limits, the default ESMTP policy.
#[test]
fn the_documents_configuration() {
    let imported = import_with(&fixture("esa-document.cfg"), AddressSide::Real);
    let policy = checked(&imported);
    assert_eq!(policy.exempt, [net("192.168.1.1/32")]);
    assert_eq!(policy.servers.len(), 1);
    let s = policy.servers[0];
    assert_eq!(s.address, ip("192.168.1.1"));
    assert_eq!((s.max_conns, s.max_embryonic), (50, 100));
    assert_eq!((s.per_client_max, s.per_client_embryonic_max), (0, 0));
    assert_eq!(
        s.on_embryonic_limit,
        crate::config::OnEmbryonicLimit::Intercept
    );
    // `inspect esmtp` is not in the excerpt: the firewall's default map.
    let default = inspector_esmtp::policy::EsmtpPolicy::default();
    assert_eq!(policy.esmtp.name, "_default_esmtp_map");
    assert!(policy.esmtp.mask_banner);
    assert_eq!(
        policy
            .esmtp
            .rules
            .iter()
            .map(|r| r.text())
            .collect::<Vec<_>>(),
        default.rules.iter().map(|r| r.text()).collect::<Vec<_>>()
    );
    assert_eq!(policy.timeouts, crate::config::FlowTimeouts::default());
    // Nothing differs from the configuration: no warning, only what was
    // assumed.
    assert!(
        imported.warnings().next().is_none(),
        "{:?}",
        imported.diagnostics
    );
    let notes = messages(&imported, Level::Note);
    assert!(has(&notes, 1, "read as the host 192.168.1.1"), "{notes:?}");
    assert!(has(&notes, 2, "read as the host 192.168.1.1"), "{notes:?}");
    assert!(
        has(&notes, 4, "`match access-list ironport_esa_internal`"),
        "{notes:?}"
    );
    assert!(
        has(&notes, 5, "service-policy global_policy global"),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("note: no `inspect esmtp`")),
        "{notes:?}"
    );
    // Each entry names its lines.
    assert!(imported.toml.contains(
        "# access-list ironport_esa_internal, lines 1, 2; class ironport_esa (line 6): no inspect esmtp (line 7)"
    ), "{}", imported.toml);
    assert!(imported.toml.contains(
        "# line 8: static (inside,outside) 1.1.1.1 192.168.1.1 netmask 255.255.255.255 tcp 50 100"
    ));
}

/// The translation of the document's configuration is the one docs/asa.md
/// shows (`UPDATE_GOLDEN=1` rewrites it).
#[test]
fn the_documents_configuration_as_docs_show_it() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/asa/esa-document.toml");
    let imported = import(
        &fixture("esa-document.cfg"),
        &Options {
            source: "esa-document.cfg".into(),
            ..Options::default()
        },
    );
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &imported.toml).unwrap();
    }
    assert_eq!(
        imported.toml,
        std::fs::read_to_string(&golden).unwrap(),
        "rerun with UPDATE_GOLDEN=1 and update docs/asa.md"
    );
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/asa.md"))
            .unwrap();
    assert!(
        docs.contains(&imported.toml),
        "docs/asa.md shows another translation"
    );
    assert!(
        docs.contains(&fixture("esa-document.cfg")),
        "docs/asa.md shows another configuration"
    );
}

/// The published addresses, when the translation stays behind the
/// inspector.
#[test]
fn the_documents_configuration_with_mapped_addresses() {
    let imported = import_with(&fixture("esa-document.cfg"), AddressSide::Mapped);
    let policy = checked(&imported);
    assert_eq!(policy.exempt, [net("1.1.1.1/32")]);
    assert_eq!(policy.servers[0].address, ip("1.1.1.1"));
    assert!(
        imported
            .toml
            .contains("192.168.1.1/32 is 1.1.1.1/32 by the translation on line 8")
    );
}

/// A running-config with every criterion, regex objects and groups,
/// inspect class-maps, names, objects, object NAT, limits and timeouts.
#[test]
fn a_configuration_with_every_criterion() {
    let imported = import_with(&fixture("every-criterion.cfg"), AddressSide::Real);
    let policy = checked(&imported);
    let toml = &imported.toml;
    assert_eq!(policy.exempt, [net("192.168.1.1/32"), net("10.9.9.0/24")]);
    let servers: Vec<_> = policy
        .servers
        .iter()
        .map(|s| {
            (
                s.address.to_string(),
                s.max_conns,
                s.max_embryonic,
                s.per_client_max,
                s.per_client_embryonic_max,
            )
        })
        .collect();
    assert_eq!(
        servers,
        [
            ("192.168.1.1".to_string(), 50, 100, 0, 0),
            ("192.168.1.25".to_string(), 200, 50, 10, 5),
            ("192.168.1.30".to_string(), 200, 50, 10, 5),
        ]
    );
    assert_eq!(
        policy.timeouts,
        crate::config::FlowTimeouts {
            embryonic: Duration::from_secs(20),
            idle: Duration::from_secs(7200),
            half_closed: Duration::from_secs(300),
        }
    );
    assert_eq!(policy.proxy.timeouts.idle, Duration::from_secs(7200));
    let e = &policy.esmtp;
    assert_eq!(e.name, "mail_map");
    assert!(e.mask_banner);
    assert_eq!(e.allow_tls, Some(true));
    assert_eq!(
        e.special_character.map(|a| a.to_string()).as_deref(),
        Some("log")
    );
    let relay = e.mail_relay.as_ref().unwrap();
    assert_eq!(
        (relay.domain.as_str(), relay.actions.to_string().as_str()),
        ("example.com", "drop-connection log")
    );
    let rules: Vec<(String, String)> = e
        .rules
        .iter()
        .map(|r| (r.text(), r.actions.to_string()))
        .collect();
    let want = [
        ("match cmd line length gt 512", "drop-connection log"),
        ("match cmd RCPT count gt 100", "drop-connection log"),
        ("match cmd verb VRFY", "mask log"),
        ("match cmd verb ETRN", "rate-limit 5"),
        (
            "match not cmd verb HELO EHLO MAIL RCPT DATA RSET NOOP QUIT AUTH VRFY ETRN HELP",
            "log",
        ),
        ("match body line length gt 998", "log"),
        ("match body length gt 50000000", "reset log"),
        ("match header line length gt 998", "drop-connection log"),
        ("match header length gt 65536", "drop-connection log"),
        ("match header to-fields count gt 20", "drop-connection log"),
        (
            "match invalid-recipients count gt 20",
            "drop-connection log",
        ),
        (
            "match MIME filetype regex ^application/(x-msdownload|x-dosexec)$",
            "drop-connection log",
        ),
        ("match MIME filename length gt 255", "drop-connection log"),
        ("match MIME encoding binary others", "log"),
        (
            r"match sender-address regex (?:@spam\.example$)|(?:^bulk-[0-9]+@)",
            "drop-connection log",
        ),
        ("match sender-address length gt 320", "drop-connection log"),
        ("match ehlo-reply-parameter others", "mask"),
        ("match cmd verb EXPN", "drop-connection log"),
    ];
    assert_eq!(
        rules,
        want.map(|(a, b)| (a.to_string(), b.to_string())).to_vec()
    );
    // The regex as the engine runs it.
    let Criterion::SenderAddressRegex(re) = &e.rules[14].criterion else {
        panic!("{:?}", e.rules[14])
    };
    assert!(re.is_match("x@spam.example") && re.is_match("bulk-7@x") && !re.is_match("a@b"));

    // Nothing of the ESMTP inspection, the limits, the exemptions or the
    // timeouts differs; what has no bearing is listed.
    assert!(
        imported.warnings().next().is_none(),
        "{:?}",
        imported.diagnostics
    );
    let notes = messages(&imported, Level::Note);
    for (line, what) in [
        (5, "hostname: no bearing"),
        (9, "interface: no bearing"),
        (32, "access-group"),
        (33, "route"),
        (34, "timeout (other than conn, half-closed, embryonic)"),
        (55, "policy-map type inspect dns: no bearing"),
        (
            107,
            "inspection of other protocols: no bearing on ESMTP inspection, limits or exemptions; left out (lines 107, 108)",
        ),
        (43, "match-any, 2 criteria"),
    ] {
        assert!(has(&notes, line, what), "line {line}: {what}: {notes:#?}");
    }
    for needle in [
        "# line 92: match sender-address regex class bad_senders; action on line 93",
        "# line 44: match header length gt 65536 (class-map big_headers); class line 82, action 83",
        "# line 59: policy-map type inspect esmtp mail_map; inspect esmtp in class inspection_default (line 109)",
    ] {
        assert!(toml.contains(needle), "{needle} not in\n{toml}");
    }
}

#[test]
fn a_configuration_with_every_criterion_with_mapped_addresses() {
    let imported = import_with(&fixture("every-criterion.cfg"), AddressSide::Mapped);
    let policy = checked(&imported);
    assert_eq!(policy.exempt, [net("203.0.113.1/32"), net("10.9.9.0/24")]);
    let addresses: Vec<String> = policy
        .servers
        .iter()
        .map(|s| s.address.to_string())
        .collect();
    // .30 has no translation: the same address on both sides.
    assert_eq!(addresses, ["203.0.113.1", "203.0.113.25", "192.168.1.30"]);
}

/// Each thing the policy cannot say is a warning on its line, and the rest
/// is still translated.
#[test]
fn what_cannot_be_translated_is_a_warning_with_its_line() {
    let text = "\
access-list pair extended permit ip host 10.0.0.1 host 10.0.0.2
access-list pair extended deny ip any host 10.0.0.3
access-list pair extended permit ip any host 10.0.0.4
access-list pair extended permit udp any host 10.0.0.5
access-list all_mail extended permit tcp any any eq smtp
class-map pair
 match access-list pair
class-map everything
 match any
class-map type inspect esmtp match-all both
 match cmd verb VRFY
 match cmd verb EXPN
regex nope \"x\"
policy-map type inspect esmtp m
 parameters
  mask-banner
  no-such-parameter
 match cmd verb VRFY
 match sender-address regex missing
  drop-connection
 match header line length gt 998
  mask
 class both
  drop-connection
 match cmd RCPT count gt 10
  drop-connection log
policy-map type inspect esmtp other
 match cmd verb VRFY
  log
policy-map global_policy
 class inspection_default
  inspect esmtp m
 class pair
  no inspect esmtp
 class everything
  set connection conn-max 10
  set connection decrement-ttl
 class x
  inspect esmtp other
policy-map unused
 class pair
  no inspect esmtp
service-policy global_policy global
static (inside,outside) 1.1.1.0 10.0.1.0 netmask 255.255.255.0 tcp 10 5
timeout conn 0:00:00
";
    let imported = import_with(text, AddressSide::Real);
    let policy = checked(&imported);
    let warnings = messages(&imported, Level::Warning);
    for (line, what) in [
        (1, "between two sets of addresses only"),
        (2, "an exemption cannot have exceptions"),
        (3, "exempts traffic to 10.0.0.4/32 only"),
        (10, "match-all"),
        (17, "not an ESMTP parameter"),
        (18, "has no action"),
        (19, "`regex missing` is not defined"),
        (21, "`mask` is valid only"),
        (34, "the first class with an inspection wins"),
        (36, "connection limits for a whole class of traffic"),
        (37, "decrement-ttl"),
        (38, "no class-map x"),
        (39, "the inspector has one ESMTP policy, m"),
        (40, "policy-map unused is not applied"),
        (44, "limits of a network static"),
        (45, "at least a second"),
    ] {
        assert!(
            has(&warnings, line, what),
            "line {line}: {what}: {warnings:#?}"
        );
    }
    let notes = messages(&imported, Level::Note);
    assert!(has(&notes, 4, "holds no SMTP"), "{notes:#?}");
    assert!(
        has(&notes, 27, "is not used by the service policy"),
        "{notes:#?}"
    );
    // What could be translated is.
    assert_eq!(policy.exempt, [net("10.0.0.4/32")]);
    assert!(policy.servers.is_empty());
    let rules: Vec<String> = policy.esmtp.rules.iter().map(|r| r.text()).collect();
    assert_eq!(rules, ["match cmd RCPT count gt 10"]);
    assert!(policy.esmtp.mask_banner);
    // The warnings head the policy file too.
    assert!(
        imported
            .toml
            .contains("#   line 44: warning: limits of a network static")
    );
}

#[test]
fn pix_fixups_and_disabled_inspection() {
    let imported = import_with("fixup protocol smtp 25\n", AddressSide::Real);
    assert!(
        imported.diagnostics.is_empty(),
        "{:?}",
        imported.diagnostics
    );
    assert_eq!(checked(&imported).esmtp.name, "_default_esmtp_map");
    // Mailguard off, as the second document recommends: nothing inspected.
    let imported = import_with("no fixup protocol smtp 25\n", AddressSide::Real);
    let policy = checked(&imported);
    assert_eq!(policy.exempt, [net("0.0.0.0/0"), net("::/0")]);
    assert!(has(
        &messages(&imported, Level::Warning),
        1,
        "every address is exempt"
    ));
    // The same on an ASA.
    let imported = import_with(
        "policy-map global_policy\n class inspection_default\n  no inspect esmtp\n",
        AddressSide::Real,
    );
    assert_eq!(checked(&imported).exempt, [net("0.0.0.0/0"), net("::/0")]);
}

/// The firewall's default map written out (`show running-config all`) is
/// read as written, a map of one's own starts with no parameters.
#[test]
fn the_default_map_as_written_and_a_bare_map() {
    let text = "policy-map type inspect esmtp _default_esmtp_map\n description Default ESMTP policy-map\n parameters\n  mask-banner\n  no mail-relay\n  no special-character\n  no allow-tls\n match cmd line length gt 512\n  drop-connection log\npolicy-map global_policy\n class inspection_default\n  inspect esmtp _default_esmtp_map\nservice-policy global_policy global\n";
    let imported = import_with(text, AddressSide::Real);
    assert!(
        imported.warnings().next().is_none(),
        "{:?}",
        imported.diagnostics
    );
    let p = checked(&imported).esmtp;
    assert!(p.mask_banner && p.allow_tls.is_none() && p.special_character.is_none());
    assert_eq!(p.rules.len(), 1);
    let imported = import_with(
        "policy-map type inspect esmtp m\n match cmd verb VRFY\n  drop-connection log\npolicy-map global_policy\n class inspection_default\n  inspect esmtp m\n",
        AddressSide::Real,
    );
    let p = checked(&imported).esmtp;
    assert!(!p.mask_banner, "no mask-banner in a map of one's own");
    assert_eq!(p.name, "m");
}

/// In compat mode the same policy, as the firewall behaves.
#[test]
fn compat_mode() {
    let imported = import(
        &fixture("esa-document.cfg"),
        &Options {
            mode: Mode::Compat,
            ..Options::default()
        },
    );
    assert_eq!(checked(&imported).esmtp.mode, Mode::Compat);
}

use inspector_esmtp::policy::Criterion;

/// A class-map matching the submission port makes `[esmtp] ports`; the
/// default inspection keeps 25 beside it.
#[test]
fn a_class_matching_other_ports_lists_them() {
    let text = "\
class-map submission
 match port tcp eq 587
class-map wide
 match port tcp range 2525 2526
class-map huge
 match port tcp range 1 1024
policy-map global_policy
 class inspection_default
  inspect esmtp
 class submission
  inspect esmtp
 class wide
  inspect esmtp
 class huge
  inspect esmtp
service-policy global_policy global
";
    let imported = import_with(text, AddressSide::Real);
    let policy = checked(&imported);
    assert_eq!(
        policy.esmtp.ports,
        [25, 587, 2525, 2526],
        "{}",
        imported.toml
    );
    assert!(
        imported.toml.contains("# inspected ports: 25: class inspection_default (line 9); 587: class submission (line 11);"),
        "{}",
        imported.toml
    );
    let warnings = messages(&imported, Level::Warning);
    assert!(
        has(&warnings, 15, "at most 8 single ports"),
        "{warnings:#?}"
    );
    // Only the submission port: port 25 is not inspected.
    let imported = import_with(
        "class-map submission\n match port tcp eq 587\npolicy-map p\n class submission\n  inspect esmtp\nservice-policy p global\n",
        AddressSide::Real,
    );
    assert_eq!(checked(&imported).esmtp.ports, [587], "{}", imported.toml);
    // The default alone writes no `ports` line.
    let imported = import_with("fixup protocol smtp 25\n", AddressSide::Real);
    assert!(!imported.toml.contains("ports ="), "{}", imported.toml);
}

/// An access-list exemption is read against the ports the policy inspects,
/// not port 25 alone: where submission (587) is inspected, an entry for
/// TCP to 587 exempts its host, and one for port 80 still has no bearing.
#[test]
fn an_exemption_for_an_inspected_port_other_than_25_is_translated() {
    let text = "access-list gw extended permit tcp any host 192.168.1.5 eq 587\n\
                access-list gw extended permit tcp any host 192.168.1.6 eq 80\n\
                class-map submission\n match port tcp eq 587\n\
                class-map gateways\n match access-list gw\n\
                policy-map p\n class gateways\n  no inspect esmtp\n class submission\n  inspect esmtp\n\
                service-policy p global\n";
    let imported = import_with(text, AddressSide::Real);
    let policy = checked(&imported);
    assert_eq!(policy.esmtp.ports, [587], "{}", imported.toml);
    assert_eq!(policy.exempt, [net("192.168.1.5/32")], "{}", imported.toml);
    let notes = messages(&imported, Level::Note);
    assert!(
        has(&notes, 2, "holds no SMTP (TCP to port 587)"),
        "{notes:#?}"
    );
}
