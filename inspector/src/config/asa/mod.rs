//! `inspector policy import-asa`: a firewall's running-config into a policy
//! file.
//!
//! What it reads:
//!
//! - the ESMTP inspection: `policy-map type inspect esmtp` (its
//!   `parameters`, every `match [not] …` line and its actions, `class` lines
//!   of `class-map type inspect esmtp` groups, `regex` objects and
//!   `class-map type regex` groups), chosen by the `inspect esmtp [MAP]` of
//!   the service policy (or PIX's `fixup protocol smtp`), into `[esmtp]`;
//! - the exemption pattern `access-list` + `class-map … match access-list`
//!   + `policy-map … class … no inspect esmtp` into `[[exempt]]`;
//! - connection limits, `static … tcp N M` and `set connection conn-max /
//!   embryonic-conn-max / per-client-max / per-client-embryonic-max`, into
//!   `[[server]]`, with the addresses on the side of the translation the
//!   caller chooses ([`AddressSide`]);
//! - `timeout conn / half-closed` and `set connection timeout` into
//!   `[timeouts]` (and `[proxy] idle-timeout`).
//!
//! Whatever it cannot translate is a [`Diagnostic`] with its line: a
//! warning when the policy behaves differently from the configuration
//! there, a note when it only says what was assumed or left out because it
//! has no bearing on SMTP. Nothing is dropped silently.

pub mod addr;
mod esmtp;
mod lines;

use std::{
    collections::{BTreeMap, HashMap},
    fmt::{self, Write as _},
    net::IpAddr,
};

pub use addr::AddressSide;
use addr::{AclEntry, Nat, Objects, Spec};
use esmtp::{EsmtpOut, Regexes};
use inspector_esmtp::policy::{
    Mode,
    ports::{DEFAULT_PORTS, MAX_PORTS},
};
use ipnet::IpNet;
use lines::{Line, Node};

/// How the configuration is translated.
#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    pub addresses: AddressSide,
    /// The configuration's name, for the policy's comments.
    pub source: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            mode: Mode::Modern,
            addresses: AddressSide::Real,
            source: "running-config".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// The policy differs from the configuration here.
    Warning,
    /// What was assumed, or left out as having no bearing on the policy.
    Note,
}

/// Something about one line (0: the whole configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: usize,
    pub level: Level,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Warning => "warning",
            Level::Note => "note",
        };
        if self.line == 0 {
            write!(f, "{level}: {}", self.message)
        } else {
            write!(f, "line {}: {level}: {}", self.line, self.message)
        }
    }
}

impl Diagnostic {
    /// `FILE:LINE: warning: …`, as compilers print it.
    pub fn located(&self, file: &str) -> String {
        let level = match self.level {
            Level::Warning => "warning",
            Level::Note => "note",
        };
        if self.line == 0 {
            format!("{file}: {level}: {}", self.message)
        } else {
            format!("{file}:{}: {level}: {}", self.line, self.message)
        }
    }
}

#[derive(Debug, Default)]
pub struct Diagnostics(Vec<Diagnostic>);

impl Diagnostics {
    pub fn warn(&mut self, line: usize, message: impl Into<String>) {
        self.push(line, Level::Warning, message.into());
    }

    pub fn note(&mut self, line: usize, message: impl Into<String>) {
        self.push(line, Level::Note, message.into());
    }

    fn push(&mut self, line: usize, level: Level, message: String) {
        let d = Diagnostic {
            line,
            level,
            message,
        };
        if !self.0.contains(&d) {
            self.0.push(d);
        }
    }
}

/// The policy and what the translation has to say about it.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The policy file's text.
    pub toml: String,
    /// By line.
    pub diagnostics: Vec<Diagnostic>,
}

impl Imported {
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.level == Level::Warning)
    }
}

/// Translates the running-config `text`.
pub fn import(text: &str, opts: &Options) -> Imported {
    let roots = lines::parse(text);
    let mut t = Translator::new(&roots, opts);
    t.run();
    let Translator { out, mut diags, .. } = t;
    diags.0.sort_by_key(|d| (d.line, d.level));
    let toml = out.render(opts, &diags.0);
    Imported {
        toml,
        diagnostics: diags.0,
    }
}

/// What a class of a service policy matches.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Traffic {
    /// `match any`, `class-default`.
    All,
    /// `match default-inspection-traffic`: for ESMTP, TCP to port 25.
    DefaultInspection,
    /// `match access-list NAME` (or IOS's `match address NAME`).
    Acl(String),
    /// `match port tcp …`.
    Port(addr::Ports),
    /// Something the inspector cannot select by.
    Other(String),
}

impl Traffic {
    /// Whether it holds all SMTP to port 25.
    fn all_smtp(&self) -> bool {
        match self {
            Self::All | Self::DefaultInspection => true,
            Self::Port(p) => p.matches(inspector_common::SMTP_PORT) == Some(true),
            _ => false,
        }
    }
}

/// A protected server being gathered.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServerOut {
    address: IpAddr,
    max_conns: u32,
    max_embryonic: u32,
    per_client_max: u32,
    per_client_embryonic_max: u32,
    comments: Vec<String>,
}

/// A limit from two places: the lower wins (0 is unlimited).
fn lower(a: u32, b: u32) -> u32 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    }
}

/// The policy being written.
#[derive(Debug)]
struct Out {
    exempt: Vec<(IpNet, Vec<String>)>,
    servers: Vec<ServerOut>,
    /// `[timeouts]`: key → (seconds, comment).
    timeouts: BTreeMap<&'static str, (u64, String)>,
    proxy_idle: Option<(u64, String)>,
    esmtp: EsmtpOut,
    /// `[esmtp] ports`: each with the class it comes from; empty for the
    /// default (25).
    ports: Vec<(u16, String)>,
}

struct Translator<'a> {
    opts: &'a Options,
    roots: &'a [Node],
    objects: Objects,
    regexes: Regexes,
    acls: HashMap<String, Vec<&'a Line>>,
    class_maps: HashMap<String, &'a Node>,
    inspect_classes: HashMap<String, &'a Node>,
    esmtp_maps: HashMap<String, &'a Node>,
    policy_maps: Vec<&'a Node>,
    service_policies: Vec<&'a Line>,
    statics: Vec<&'a Line>,
    timeouts: Vec<&'a Line>,
    /// `no inspect esmtp` for an access-list: (the list, the origin, the
    /// line), read once the inspected ports are known (an entry for TCP
    /// to port 587 exempts SMTP where 587 is inspected).
    exempt_acls: Vec<(String, String, usize)>,
    fixups: Vec<&'a Line>,
    /// Commands with no bearing on the policy: keyword → lines.
    ignored: BTreeMap<String, Vec<usize>>,
    diags: Diagnostics,
    out: Out,
}

impl<'a> Translator<'a> {
    fn new(roots: &'a [Node], opts: &'a Options) -> Self {
        let mut diags = Diagnostics::default();
        let (objects, problems) = Objects::collect(roots);
        for (line, message) in problems {
            diags.warn(line, message);
        }
        let regexes = esmtp::regexes(roots, &mut diags);
        Self {
            opts,
            roots,
            objects,
            regexes,
            acls: HashMap::new(),
            class_maps: HashMap::new(),
            inspect_classes: HashMap::new(),
            esmtp_maps: HashMap::new(),
            policy_maps: Vec::new(),
            service_policies: Vec::new(),
            statics: Vec::new(),
            timeouts: Vec::new(),
            exempt_acls: Vec::new(),
            fixups: Vec::new(),
            ignored: BTreeMap::new(),
            diags,
            out: Out {
                exempt: Vec::new(),
                servers: Vec::new(),
                timeouts: BTreeMap::new(),
                proxy_idle: None,
                esmtp: EsmtpOut::default_map(""),
                ports: Vec::new(),
            },
        }
    }

    fn ignore(&mut self, what: impl Into<String>, line: usize) {
        let lines = self.ignored.entry(what.into()).or_default();
        if lines.last() != Some(&line) {
            lines.push(line);
        }
    }

    fn run(&mut self) {
        self.sort();
        for l in std::mem::take(&mut self.statics) {
            self.static_nat(l);
        }
        let applied = self.applied_policy_maps();
        let mut inspects: Vec<(Option<String>, Traffic, &'a Line, String)> = Vec::new();
        for map in applied {
            self.service_policy_map(map, &mut inspects);
        }
        self.choose_esmtp_map(&inspects);
        for (name, origin, at) in std::mem::take(&mut self.exempt_acls) {
            self.exempt_acl(&name, &origin, at);
        }
        for l in std::mem::take(&mut self.timeouts) {
            self.global_timeout(l);
        }
        let ignored = std::mem::take(&mut self.ignored);
        for (what, lines) in ignored {
            let shown: Vec<String> = lines.iter().take(12).map(usize::to_string).collect();
            let more = if lines.len() > 12 { ", …" } else { "" };
            self.diags.note(
                lines[0],
                format!(
                    "{what}: no bearing on ESMTP inspection, limits or exemptions; left out (line{} {}{more})",
                    if lines.len() == 1 { "" } else { "s" },
                    shown.join(", ")
                ),
            );
        }
    }

    /// Files each top-level command where it is read.
    fn sort(&mut self) {
        let roots = self.roots;
        for node in roots {
            let l = &node.line;
            let first = l.word(0).to_ascii_lowercase();
            match first.as_str() {
                "name" | "names" | "object" | "object-group" | "regex" | "nat" => {}
                "class-map" if l.starts(&["class-map", "type", "regex"]) => {}
                "class-map" if l.starts(&["class-map", "type", "inspect", "esmtp"]) => {
                    let name = l.words.last().cloned().unwrap_or_default();
                    self.inspect_classes.insert(name, node);
                }
                "class-map" if l.starts(&["class-map", "type"]) => {
                    self.ignore(format!("class-map type {} {}", l.word(2), l.word(3)), l.no)
                }
                "class-map" => {
                    self.class_maps.insert(l.word(1).to_string(), node);
                }
                "policy-map" if l.starts(&["policy-map", "type", "inspect", "esmtp"]) => {
                    self.esmtp_maps.insert(l.word(4).to_string(), node);
                }
                "policy-map" if l.starts(&["policy-map", "type"]) => {
                    self.ignore(format!("policy-map type {} {}", l.word(2), l.word(3)), l.no)
                }
                "policy-map" => self.policy_maps.push(node),
                "service-policy" => self.service_policies.push(l),
                "access-list" => self.acls.entry(l.word(1).to_string()).or_default().push(l),
                "static" => self.statics.push(l),
                "timeout" => self.timeouts.push(l),
                "fixup" | "no"
                    if l.starts(&["fixup", "protocol", "smtp"])
                        || l.starts(&["no", "fixup", "protocol", "smtp"]) =>
                {
                    self.fixups.push(l)
                }
                _ => self.ignore(l.word(0), l.no),
            }
        }
    }

    /// `static (real,mapped) MAPPED REAL [netmask M] … [tcp] [N [M]] [udp N]`
    /// (and the port form `static (…) tcp MAPPED PORT REAL PORT …`): a
    /// translation, and the connection limits of the real host.
    fn static_nat(&mut self, l: &'a Line) {
        let w = |k: usize| l.word(k);
        let mut i = 2;
        let port_static = matches!(w(i).to_ascii_lowercase().as_str(), "tcp" | "udp");
        let (mapped, real) = if port_static {
            i += 5;
            (w(3), w(5))
        } else {
            i += 2;
            (w(2), w(3))
        };
        if real.eq_ignore_ascii_case("access-list") {
            self.diags.warn(
                l.no,
                "policy static (by access-list): not translated; write the servers' [[server]] entries by hand",
            );
            return;
        }
        let Some(real_addr) = self.objects.address(real) else {
            self.diags
                .warn(l.no, format!("`{real}`: not an address; not translated"));
            return;
        };
        let mut len = if real_addr.is_ipv4() { 32 } else { 128 };
        let mut limits: Vec<u32> = Vec::new();
        let mut after_tcp = false;
        while i < l.words.len() {
            let word = w(i).to_ascii_lowercase();
            match word.as_str() {
                "netmask" => {
                    match addr::mask_len(w(i + 1)) {
                        Some(n) => len = n,
                        None => self
                            .diags
                            .warn(l.no, format!("`netmask {}`: not a netmask", w(i + 1))),
                    }
                    i += 1;
                }
                "tcp" => after_tcp = true,
                "udp" => {
                    self.diags.note(
                        l.no,
                        format!("`udp {}`: UDP connection limits have no bearing on SMTP; left out", w(i + 1)),
                    );
                    i += 1;
                }
                "dns" => self.diags.note(
                    l.no,
                    "`dns`: DNS reply rewriting has no bearing on the policy; left out",
                ),
                "norandomseq" => self.diags.note(
                    l.no,
                    "`norandomseq`: the inspector never rewrites sequence numbers (except for TCP intercept)",
                ),
                "nailed" => self.diags.warn(l.no, "`nailed`: not translated"),
                n if n.parse::<u32>().is_ok() && limits.len() < 2 => {
                    limits.push(n.parse().expect("checked"));
                }
                other => self
                    .diags
                    .warn(l.no, format!("`{other}`: not translated")),
            }
            i += 1;
        }
        let _ = after_tcp; // `tcp` only announces the numbers (PIX 6 left it out)
        let Ok(real_net) = IpNet::new(real_addr, len) else {
            return;
        };
        let real_net = real_net.trunc();
        if mapped.eq_ignore_ascii_case("interface") {
            if self.opts.addresses == AddressSide::Mapped {
                self.diags.warn(
                    l.no,
                    "published on the interface's own address, which the configuration does not say here: the real address is used",
                );
            }
        } else {
            match self.objects.address(mapped) {
                Some(m) => {
                    let mapped = IpNet::new(m, len).map(|n| n.trunc()).unwrap_or(real_net);
                    self.objects.nats.push(Nat {
                        real: real_net,
                        mapped,
                        line: l.no,
                    });
                }
                None => self.diags.warn(
                    l.no,
                    format!("`{mapped}`: not an address; translation not read"),
                ),
            }
        }
        let (conns, embryonic) = (
            limits.first().copied().unwrap_or(0),
            limits.get(1).copied().unwrap_or(0),
        );
        if conns == 0 && embryonic == 0 {
            return;
        }
        if real_net.prefix_len() != real_net.max_prefix_len() {
            self.diags.warn(
                l.no,
                format!(
                    "limits of a network static ({real_net}): the inspector limits each protected server, one address each; not translated"
                ),
            );
            return;
        }
        if port_static {
            self.diags.note(
                l.no,
                format!(
                    "the firewall limits connections to port {} only; the inspector's limits count every TCP connection to the server",
                    w(4)
                ),
            );
        }
        let (address, _) = self.objects.to_side(real_net, self.opts.addresses);
        self.server(
            address.addr(),
            [conns, embryonic, 0, 0],
            format!("line {}: {}", l.no, l.text),
        );
    }

    /// Adds limits to a server (the lower of two wins).
    fn server(&mut self, address: IpAddr, limits: [u32; 4], comment: String) {
        let servers = &mut self.out.servers;
        let s = match servers.iter_mut().position(|s| s.address == address) {
            Some(i) => &mut servers[i],
            None => {
                servers.push(ServerOut {
                    address,
                    max_conns: 0,
                    max_embryonic: 0,
                    per_client_max: 0,
                    per_client_embryonic_max: 0,
                    comments: Vec::new(),
                });
                servers.last_mut().expect("pushed")
            }
        };
        s.max_conns = lower(s.max_conns, limits[0]);
        s.max_embryonic = lower(s.max_embryonic, limits[1]);
        s.per_client_max = lower(s.per_client_max, limits[2]);
        s.per_client_embryonic_max = lower(s.per_client_embryonic_max, limits[3]);
        if !s.comments.is_empty() {
            s.comments
                .push("(two limits for one server: the lower of each applies)".into());
            s.comments.dedup();
        }
        s.comments.push(comment);
    }

    /// The policy-maps the service policy applies, in order.
    fn applied_policy_maps(&mut self) -> Vec<&'a Node> {
        let mut applied: Vec<&'a Node> = Vec::new();
        let by_name = |name: &str| {
            self.policy_maps
                .iter()
                .copied()
                .find(|n| n.line.word(1) == name)
        };
        for l in self.service_policies.clone() {
            let name = l.word(1);
            match by_name(name) {
                Some(map) => {
                    if l.word(2).eq_ignore_ascii_case("interface") {
                        self.diags.warn(
                            l.no,
                            format!(
                                "`{}`: applied on interface {} only; the inspector applies it on every interface it runs on",
                                l.text,
                                l.word(3)
                            ),
                        );
                    }
                    if !applied.iter().any(|m| std::ptr::eq(*m, map)) {
                        applied.push(map);
                    }
                }
                None => self
                    .diags
                    .warn(l.no, format!("`{}`: no policy-map {name}", l.text)),
            }
        }
        if self.service_policies.is_empty()
            && let Some(global) = by_name("global_policy")
        {
            self.diags.note(
                global.line.no,
                "no `service-policy` line: `service-policy global_policy global`, the firewall's default, is assumed",
            );
            applied.push(global);
        }
        for map in self.policy_maps.clone() {
            if !applied.iter().any(|m| std::ptr::eq(*m, map)) {
                self.diags.warn(
                    map.line.no,
                    format!(
                        "policy-map {} is not applied by any service-policy: not translated",
                        map.line.word(1)
                    ),
                );
            }
        }
        applied
    }

    /// What a class of a service policy matches.
    fn traffic(&mut self, class: &Line) -> (Traffic, String) {
        let name = class.word(1);
        if name == "class-default" {
            return (Traffic::All, "class-default".into());
        }
        let Some(node) = self.class_maps.get(name).copied() else {
            if name == "inspection_default" {
                self.diags.note(
                    class.no,
                    "class-map inspection_default is not in the configuration: `match default-inspection-traffic`, the firewall's default, is assumed",
                );
                return (Traffic::DefaultInspection, "inspection_default".into());
            }
            self.diags
                .warn(class.no, format!("`{}`: no class-map {name}", class.text));
            return (Traffic::Other(format!("class {name}")), name.into());
        };
        let matches: Vec<&Line> = node
            .children
            .iter()
            .map(|c| &c.line)
            .filter(|l| l.starts(&["match"]))
            .collect();
        let describe = format!("class-map {name} (line {})", node.line.no);
        let Some(m) = matches.first() else {
            self.diags
                .warn(node.line.no, format!("class-map {name} matches nothing"));
            return (Traffic::Other(describe.clone()), describe);
        };
        for extra in &matches[1..] {
            self.diags.warn(
                extra.no,
                format!(
                    "`{}`: a class-map is read by its first match only; not translated",
                    extra.text
                ),
            );
        }
        let traffic = match m.word(1).to_ascii_lowercase().as_str() {
            "any" => Traffic::All,
            "default-inspection-traffic" => Traffic::DefaultInspection,
            "access-list" => Traffic::Acl(m.word(2).to_string()),
            "address" => {
                self.diags.note(
                    m.no,
                    format!(
                        "`{}`: the firewall writes `match access-list {}`; read as that",
                        m.text,
                        m.word(2)
                    ),
                );
                Traffic::Acl(m.word(2).to_string())
            }
            "port" if m.word(2).eq_ignore_ascii_case("tcp") => {
                let ports = match m.word(3).to_ascii_lowercase().as_str() {
                    "eq" => addr::port(m.word(4)).map(addr::Ports::Eq),
                    "range" => addr::port(m.word(4))
                        .zip(addr::port(m.word(5)))
                        .map(|(a, b)| addr::Ports::Range(a, b)),
                    _ => None,
                };
                match ports {
                    Some(p) => Traffic::Port(p),
                    None => Traffic::Other(m.text.clone()),
                }
            }
            _ => Traffic::Other(m.text.clone()),
        };
        if let Traffic::Other(what) = &traffic {
            self.diags.warn(
                m.no,
                format!("`{what}`: the inspector cannot select traffic by this; the class is not translated"),
            );
        }
        (traffic, format!("{describe}: {}", m.text))
    }

    /// The classes of an applied policy-map, in order.
    fn service_policy_map(
        &mut self,
        map: &'a Node,
        inspects: &mut Vec<(Option<String>, Traffic, &'a Line, String)>,
    ) {
        // Classes inspecting ESMTP so far in this map (first match wins).
        let mut inspecting: Vec<(usize, Traffic)> = Vec::new();
        for class in &map.children {
            if !class.line.starts(&["class"]) {
                if !class.line.starts(&["description"]) {
                    self.diags.warn(
                        class.line.no,
                        format!("`{}`: not translated", class.line.text),
                    );
                }
                continue;
            }
            let (traffic, describe) = self.traffic(&class.line);
            for action in &class.children {
                let l = &action.line;
                if l.starts(&["inspect", "esmtp"]) {
                    let name = l.words.get(2).cloned();
                    inspecting.push((class.line.no, traffic.clone()));
                    inspects.push((name, traffic.clone(), l, class.line.word(1).to_string()));
                } else if l.starts(&["no", "inspect", "esmtp"]) {
                    if let Some((no, _)) = inspecting
                        .iter()
                        .find(|(_, t)| t.all_smtp() || *t == traffic)
                    {
                        self.diags.warn(
                            l.no,
                            format!(
                                "on the firewall the first class with an inspection wins: traffic of class {} also matches the class on line {no}, which inspects ESMTP, and is inspected there; translated as the exemption this line intends",
                                class.line.word(1)
                            ),
                        );
                    }
                    self.exempt(&traffic, &class.line, l, &describe);
                } else if l.starts(&["inspect"]) || l.starts(&["no", "inspect"]) {
                    self.ignore("inspection of other protocols", l.no);
                } else if l.starts(&["set", "connection"]) {
                    self.set_connection(&traffic, &class.line, l, &describe);
                } else {
                    self.diags
                        .warn(l.no, format!("`{}`: not translated", l.text));
                }
            }
        }
    }

    /// `no inspect esmtp` for the traffic of a class.
    fn exempt(&mut self, traffic: &Traffic, class: &Line, action: &Line, describe: &str) {
        let origin = format!(
            "class {} (line {}): no inspect esmtp (line {}); {describe}",
            class.word(1),
            class.no,
            action.no
        );
        match traffic {
            Traffic::Acl(name) => self.exempt_acls.push((name.clone(), origin, action.no)),
            t if t.all_smtp() => {
                self.diags.warn(
                    action.no,
                    "ESMTP inspection is off for all SMTP: every address is exempt",
                );
                for net in Spec::any_nets(true, true) {
                    self.add_exempt(net, origin.clone());
                }
            }
            Traffic::Port(_) => self.diags.note(
                action.no,
                "the class holds no SMTP to port 25: the exemption has no bearing",
            ),
            _ => {}
        }
    }

    fn add_exempt(&mut self, net: IpNet, comment: String) {
        match self.out.exempt.iter_mut().find(|(n, _)| *n == net) {
            Some((_, comments)) => {
                if !comments.contains(&comment) {
                    comments.push(comment)
                }
            }
            None => self.out.exempt.push((net, vec![comment])),
        }
    }

    /// The entries of an access-list, read; errors warned.
    fn acl(&mut self, name: &str, at: usize) -> Vec<AclEntry> {
        let Some(acl) = self.acls.get(name).cloned() else {
            self.diags.warn(
                at,
                format!("access-list {name} is not in the configuration"),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for l in acl {
            match self.objects.acl_entry(l) {
                Ok(Some(e)) => {
                    for n in &e.notes {
                        self.diags.note(l.no, n.clone());
                    }
                    if e.inactive {
                        self.diags.note(l.no, "inactive: left out");
                        continue;
                    }
                    out.push(e);
                }
                Ok(None) => {}
                Err(m) => self
                    .diags
                    .warn(l.no, format!("`{}`: {m}; not translated", l.text)),
            }
        }
        out
    }

    fn exempt_acl(&mut self, name: &str, origin: &str, at: usize) {
        let entries = self.acl(name, at);
        // Per network: (exempt as destination, as source), the lines.
        let mut seen: Vec<(IpNet, bool, bool, Vec<usize>)> = Vec::new();
        let mut mark =
            |net: IpNet, dst: bool, line: usize| match seen.iter_mut().find(|(n, ..)| *n == net) {
                Some(s) => {
                    s.1 |= dst;
                    s.2 |= !dst;
                    s.3.push(line);
                }
                None => seen.push((net, dst, !dst, vec![line])),
            };
        let ports: Vec<u16> = if self.out.ports.is_empty() {
            DEFAULT_PORTS.to_vec()
        } else {
            self.out.ports.iter().map(|(p, _)| *p).collect()
        };
        let smtp = ports
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        for e in &entries {
            let no = e.line.no;
            let matches = ports.iter().map(|p| e.can_match_tcp(*p));
            let can = if matches.clone().any(|m| m == Some(true)) {
                Some(true)
            } else if matches.clone().all(|m| m == Some(false)) {
                Some(false)
            } else {
                None
            };
            match can {
                Some(false) => {
                    self.diags.note(
                        no,
                        format!(
                            "`{}`: holds no SMTP (TCP to port {smtp}); no bearing on the policy",
                            e.line.text
                        ),
                    );
                    continue;
                }
                None => self
                    .diags
                    .note(no, "a service object-group: read as holding SMTP"),
                Some(true) => {}
            }
            if !e.permit {
                self.diags.warn(
                    no,
                    format!(
                        "`{}`: an exemption cannot have exceptions; not translated (these addresses are exempt if a permit line covers them)",
                        e.line.text
                    ),
                );
                continue;
            }
            match (&e.src, &e.dst) {
                (Spec::Interface(_), _) | (_, Spec::Interface(_)) => self.diags.warn(
                    no,
                    "an interface's own address: not translated",
                ),
                (Spec::Any { .. }, Spec::Nets(nets)) => {
                    for n in nets {
                        mark(*n, true, no);
                    }
                }
                (Spec::Nets(nets), Spec::Any { .. }) => {
                    for n in nets {
                        mark(*n, false, no);
                    }
                }
                (Spec::Any { v4: a4, v6: a6 }, Spec::Any { v4: b4, v6: b6 }) => {
                    self.diags.warn(no, "exempts all traffic: every address is exempt");
                    for n in Spec::any_nets(*a4 && *b4, *a6 && *b6) {
                        mark(n, true, no);
                        mark(n, false, no);
                    }
                }
                (Spec::Nets(_), Spec::Nets(_)) => self.diags.warn(
                    no,
                    format!(
                        "`{}`: exempts traffic between two sets of addresses only; exemptions are by address, either way; not translated (still inspected)",
                        e.line.text
                    ),
                ),
            }
        }
        for (net, as_dst, as_src, lines) in seen {
            let shown = lines
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            if as_dst != as_src {
                self.diags.warn(
                    lines[0],
                    format!(
                        "exempts traffic {} {net} only; the inspector exempts an address both ways",
                        if as_dst { "to" } else { "from" }
                    ),
                );
            }
            let (moved, nat) = self.objects.to_side(net, self.opts.addresses);
            let mut comment = format!(
                "access-list {name}, line{} {shown}; {origin}",
                if lines.len() == 1 { "" } else { "s" }
            );
            if let Some(nat) = nat {
                let _ = write!(
                    comment,
                    "; {net} is {moved} by the translation on line {nat}"
                );
            }
            self.add_exempt(moved, comment);
        }
    }

    /// `set connection …` for the traffic of a class.
    fn set_connection(&mut self, traffic: &Traffic, class: &Line, l: &Line, describe: &str) {
        let mut limits = [0u32; 4];
        let mut any_limit = false;
        let mut i = 2;
        while i < l.words.len() {
            let word = l.word(i).to_ascii_lowercase();
            let slot = match word.as_str() {
                "conn-max" => Some(0),
                "embryonic-conn-max" => Some(1),
                "per-client-max" => Some(2),
                "per-client-embryonic-max" => Some(3),
                _ => None,
            };
            if let Some(slot) = slot {
                match l.word(i + 1).parse() {
                    Ok(n) => {
                        limits[slot] = n;
                        any_limit = true;
                    }
                    Err(_) => self
                        .diags
                        .warn(l.no, format!("`{word} {}`: not a number", l.word(i + 1))),
                }
                i += 2;
                continue;
            }
            match word.as_str() {
                "timeout" => {
                    i = self.set_timeouts(l, i + 1, describe);
                    continue;
                }
                "random-sequence-number" => self.diags.note(
                    l.no,
                    "`random-sequence-number`: the inspector never rewrites sequence numbers (except for TCP intercept)",
                ),
                "decrement-ttl" => self
                    .diags
                    .warn(l.no, "`decrement-ttl`: not translated (the kernel forwards as routed)"),
                "advanced-options" => {
                    self.diags.warn(
                        l.no,
                        format!("`advanced-options {}`: TCP normalization is not translated", l.word(i + 1)),
                    );
                    i += 1;
                }
                "syn-cookie-mss" => {
                    self.diags.warn(
                        l.no,
                        "`syn-cookie-mss`: intercepted connections offer the minimum MSS (docs/limits.md); not translated",
                    );
                    i += 1;
                }
                other => self
                    .diags
                    .warn(l.no, format!("`set connection … {other}`: not translated")),
            }
            i += 1;
        }
        if !any_limit {
            return;
        }
        let origin = format!(
            "line {}: {} (class {}, line {}; {describe})",
            l.no,
            l.text,
            class.word(1),
            class.no
        );
        let Traffic::Acl(name) = traffic else {
            self.diags.warn(
                l.no,
                "connection limits for a whole class of traffic: the inspector limits connections per protected server; not translated (list the servers in an access-list)",
            );
            return;
        };
        for e in self.acl(name, l.no) {
            if !e.permit {
                self.diags
                    .warn(e.line.no, "a deny line of a limits class: not translated");
                continue;
            }
            if !matches!(e.protocol.as_str(), "ip" | "tcp") {
                self.diags.note(
                    e.line.no,
                    format!("`{}`: not TCP; no bearing on the limits", e.line.text),
                );
                continue;
            }
            let Spec::Nets(nets) = &e.dst else {
                self.diags.warn(
                    e.line.no,
                    format!(
                        "`{}`: the inspector limits connections to protected servers, each one address; not translated",
                        e.line.text
                    ),
                );
                continue;
            };
            if !e.src.is_any() {
                self.diags.note(
                    e.line.no,
                    "the limits apply to connections from every client, not only this entry's sources",
                );
            }
            for net in nets {
                if net.prefix_len() != net.max_prefix_len() {
                    self.diags.warn(
                        e.line.no,
                        format!(
                            "{net}: a network; the inspector limits each protected server, one address each; not translated"
                        ),
                    );
                    continue;
                }
                let (moved, nat) = self.objects.to_side(*net, self.opts.addresses);
                let mut comment = format!("{origin}; access-list {name}, line {}", e.line.no);
                if let Some(nat) = nat {
                    let _ = write!(
                        comment,
                        "; {net} is {moved} by the translation on line {nat}"
                    );
                }
                self.server(moved.addr(), limits, comment);
            }
        }
    }

    /// `set connection timeout embryonic T half-closed T idle T [reset]`
    /// from word `i`; returns where it stopped.
    fn set_timeouts(&mut self, l: &Line, mut i: usize, describe: &str) -> usize {
        while i < l.words.len() {
            let key = l.word(i).to_ascii_lowercase();
            let target = match key.as_str() {
                "embryonic" => "embryonic",
                "idle" => "idle",
                "half-closed" => "half-closed",
                "reset" => {
                    self.diags.note(
                        l.no,
                        "`reset`: idle flows leave the flow table without a reset",
                    );
                    i += 1;
                    continue;
                }
                "dcd" => {
                    self.diags
                        .warn(l.no, "`dcd`: dead connection detection is not translated");
                    i += 1;
                    while l.word(i).parse::<u32>().is_ok() || l.word(i).contains(':') {
                        i += 1;
                    }
                    continue;
                }
                _ => return i,
            };
            let value = l.word(i + 1);
            self.timeout(
                target,
                value,
                l,
                &format!("{describe}; the inspector's flow timeouts are global"),
            );
            i += 2;
        }
        i
    }

    fn timeout(&mut self, target: &'static str, value: &str, l: &Line, origin: &str) {
        let Some(secs) = addr::duration(value) else {
            self.diags
                .warn(l.no, format!("`{value}`: not a time (h:mm:ss)"));
            return;
        };
        if secs == 0 {
            self.diags.warn(
                l.no,
                format!("`{target} {value}` (never): the inspector's timeouts are at least a second; the default is kept"),
            );
            return;
        }
        let comment = format!("line {}: {}; {origin}", l.no, l.text);
        if let Some((old, old_comment)) = self.out.timeouts.get(target) {
            if *old != secs {
                self.diags.warn(
                    l.no,
                    format!("a second `{target}` timeout ({secs} s); the first, {old} s ({old_comment}), is kept"),
                );
            }
            return;
        }
        self.out.timeouts.insert(target, (secs, comment.clone()));
        if target == "idle" && self.out.proxy_idle.is_none() {
            self.out.proxy_idle = Some((secs, comment));
        }
    }

    /// `timeout conn 1:00:00 half-closed 0:10:00 udp 0:02:00 …`.
    fn global_timeout(&mut self, l: &Line) {
        let mut i = 1;
        while i < l.words.len() {
            let key = l.word(i).to_ascii_lowercase();
            let value = l.word(i + 1).to_string();
            match key.as_str() {
                "conn" => self.timeout(
                    "idle",
                    &value,
                    l,
                    "the firewall's idle timeout of connections",
                ),
                "half-closed" => self.timeout(
                    "half-closed",
                    &value,
                    l,
                    "the firewall's half-closed timeout",
                ),
                "embryonic" => {
                    self.timeout("embryonic", &value, l, "the firewall's embryonic timeout")
                }
                "uauth" => {
                    // `timeout uauth 0:05:00 absolute`
                    if matches!(
                        l.word(i + 2).to_ascii_lowercase().as_str(),
                        "absolute" | "inactivity"
                    ) {
                        i += 1;
                    }
                    self.ignore("timeout (other than conn, half-closed, embryonic)", l.no);
                }
                _ => self.ignore("timeout (other than conn, half-closed, embryonic)", l.no),
            }
            i += 2;
        }
    }

    /// The ports of a `match port tcp …` class that inspects ESMTP, into
    /// `[esmtp] ports`.
    fn inspected_ports(&mut self, ports: &addr::Ports, class: &str, line: &Line) {
        let listed: Vec<u16> = match *ports {
            addr::Ports::Eq(p) => vec![p],
            addr::Ports::Range(a, b) if a <= b && usize::from(b - a) < MAX_PORTS => {
                (a..=b).collect()
            }
            _ => {
                let also = if ports.matches(inspector_common::SMTP_PORT) == Some(true) {
                    self.add_port(inspector_common::SMTP_PORT, class, line);
                    " (port 25 is)"
                } else {
                    ""
                };
                self.diags.warn(
                    line.no,
                    format!("class {class} inspects ESMTP on ports {ports:?}: the policy lists at most {MAX_PORTS} single ports; not translated{also}"),
                );
                return;
            }
        };
        for p in listed {
            self.add_port(p, class, line);
        }
    }

    fn add_port(&mut self, port: u16, class: &str, line: &Line) {
        let ports = &mut self.out.ports;
        if ports.iter().any(|(p, _)| *p == port) {
            return;
        }
        if ports.len() == MAX_PORTS {
            self.diags.warn(
                line.no,
                format!("class {class}: port {port} is past the {MAX_PORTS} ports a policy can list; not translated"),
            );
            return;
        }
        ports.push((port, format!("class {class} (line {})", line.no)));
    }

    /// The ESMTP map the service policy inspects with.
    fn choose_esmtp_map(&mut self, inspects: &[(Option<String>, Traffic, &'a Line, String)]) {
        let mut used: Option<String> = None;
        for (name, traffic, line, class) in inspects {
            let name = name.clone().unwrap_or_else(|| "_default_esmtp_map".into());
            match traffic {
                Traffic::Port(p) => self.inspected_ports(p, class, line),
                Traffic::All | Traffic::DefaultInspection => {
                    self.add_port(inspector_common::SMTP_PORT, class, line)
                }
                Traffic::Acl(acl) => self.diags.warn(
                    line.no,
                    format!(
                        "class {class} inspects ESMTP for access-list {acl} only; the inspector inspects all SMTP that is not exempt"
                    ),
                ),
                _ => {}
            }
            match &used {
                None => used = Some(name),
                Some(u) if *u == name => {}
                Some(u) => self.diags.warn(
                    line.no,
                    format!("`{}` (class {class}): the inspector has one ESMTP policy, {u}; not translated", line.text),
                ),
            }
        }
        let fixup_on = self.fixups.iter().any(|l| l.starts(&["fixup"]));
        for l in self.fixups.clone() {
            if l.starts(&["no"]) {
                self.diags.warn(
                    l.no,
                    format!("`{}`: SMTP inspection off: every address is exempt", l.text),
                );
                for net in Spec::any_nets(true, true) {
                    self.add_exempt(net, format!("line {}: {}", l.no, l.text));
                }
            } else if l
                .words
                .last()
                .and_then(|p| addr::port(p))
                .is_some_and(|p| p != inspector_common::SMTP_PORT)
            {
                self.diags.warn(
                    l.no,
                    format!(
                        "`{}`: the inspector inspects port 25; not translated",
                        l.text
                    ),
                );
            }
        }
        let first_inspect = inspects.first().map(|(_, _, l, c)| (l.no, c.clone()));
        let name = match used {
            Some(n) => n,
            None => {
                if !fixup_on && self.fixups.is_empty() {
                    self.diags.note(
                        0,
                        "no `inspect esmtp` in the configuration: the firewall's default (`class inspection_default` / `inspect esmtp`, with _default_esmtp_map) is assumed",
                    );
                }
                "_default_esmtp_map".into()
            }
        };
        let origin = match &first_inspect {
            Some((no, class)) => format!("inspect esmtp in class {class} (line {no})"),
            None => "the firewall's default inspection".into(),
        };
        self.out.esmtp = match self.esmtp_maps.get(&name).copied() {
            Some(map) => {
                let mut e =
                    esmtp::translate(map, &self.inspect_classes, &self.regexes, &mut self.diags);
                e.origin = format!("{}; {origin}", e.origin);
                e
            }
            None if name == "_default_esmtp_map" => EsmtpOut::default_map(format!(
                "_default_esmtp_map, the firewall's built-in map; {origin}"
            )),
            None => {
                let at = first_inspect.map_or(0, |(no, _)| no);
                self.diags.warn(
                    at,
                    format!(
                        "no `policy-map type inspect esmtp {name}`: _default_esmtp_map is used"
                    ),
                );
                EsmtpOut::default_map(format!(
                    "_default_esmtp_map, in place of the missing {name}"
                ))
            }
        };
        for (n, map) in self.esmtp_maps.clone() {
            if n != self.out.esmtp.name {
                self.diags.note(
                    map.line.no,
                    format!("policy-map type inspect esmtp {n} is not used by the service policy; not translated"),
                );
            }
        }
        let esmtp = &mut self.out.esmtp;
        if esmtp.name.len() > 64 || !esmtp.name.bytes().all(|b| b.is_ascii_graphic()) {
            esmtp.name = "imported".into();
        }
    }
}

/// A TOML string.
fn s(text: &str) -> String {
    toml::Value::String(text.into()).to_string()
}

impl Out {
    fn render(&self, opts: &Options, diags: &[Diagnostic]) -> String {
        let mode = match opts.mode {
            Mode::Modern => "modern",
            Mode::Compat => "compat",
        };
        let mut t = String::new();
        let _ = writeln!(
            t,
            "# Translated from {} by `inspector policy import-asa` (addresses: {}, mode: {mode}).\n# Each entry names the configuration lines it comes from.",
            opts.source.replace('\n', " "),
            opts.addresses.name()
        );
        if !diags.is_empty() {
            t.push_str("#\n# What was not translated, or assumed:\n");
            for d in diags {
                let _ = writeln!(t, "#   {d}");
            }
        }
        for (net, comments) in &self.exempt {
            t.push_str("\n[[exempt]]\n");
            for c in comments {
                let _ = writeln!(t, "# {c}");
            }
            let _ = writeln!(t, "network = {}", s(&net.to_string()));
        }
        for server in &self.servers {
            t.push_str("\n[[server]]\n");
            for c in &server.comments {
                let _ = writeln!(t, "# {c}");
            }
            let _ = writeln!(t, "address = {}", s(&server.address.to_string()));
            for (key, value) in [
                ("max-conns", server.max_conns),
                ("max-embryonic", server.max_embryonic),
                ("per-client-max", server.per_client_max),
                ("per-client-embryonic-max", server.per_client_embryonic_max),
            ] {
                if value != 0 {
                    let _ = writeln!(t, "{key} = {value}");
                }
            }
            if server.max_embryonic != 0 || server.per_client_embryonic_max != 0 {
                t.push_str("on-embryonic-limit = \"intercept\"   # the firewall's TCP intercept\n");
            }
        }
        if !self.timeouts.is_empty() {
            t.push_str("\n[timeouts]\n");
            for (key, (secs, comment)) in &self.timeouts {
                let _ = writeln!(t, "# {comment}\n{key} = {secs}");
            }
        }
        if let Some((secs, comment)) = &self.proxy_idle {
            let _ = writeln!(
                t,
                "\n[proxy]\n# {comment}; after STARTTLS the proxy relays opaquely for as long\nidle-timeout = {secs}"
            );
        }
        let e = &self.esmtp;
        t.push_str("\n[esmtp]\n");
        let _ = writeln!(t, "# {}", e.origin);
        let _ = writeln!(t, "name = {}", s(&e.name));
        let _ = writeln!(t, "mode = \"{mode}\"");
        let ports: Vec<u16> = self.ports.iter().map(|(p, _)| *p).collect();
        if !ports.is_empty() && ports != DEFAULT_PORTS {
            let from: Vec<String> = self
                .ports
                .iter()
                .map(|(p, c)| format!("{p}: {c}"))
                .collect();
            let _ = writeln!(t, "# inspected ports: {}", from.join("; "));
            let _ = writeln!(t, "ports = {ports:?}");
        }
        let _ = writeln!(t, "mask-banner = {}", e.mask_banner);
        let _ = writeln!(
            t,
            "allow-tls = {}",
            match e.allow_tls {
                None => "false".into(),
                Some(false) => "true".into(),
                Some(true) => s("log"),
            }
        );
        let _ = writeln!(
            t,
            "special-character = {}",
            e.special_character.as_deref().map_or("false".into(), s)
        );
        if let Some((domain, action)) = &e.mail_relay {
            let _ = writeln!(
                t,
                "mail-relay = {{ domain = {}, action = {} }}",
                s(domain),
                s(action)
            );
        }
        for r in &e.rules {
            let _ = writeln!(
                t,
                "\n[[esmtp.match]]\n# {}\nmatch = {}\naction = {}",
                r.comment,
                s(&r.criterion),
                s(&r.action)
            );
        }
        t
    }
}

#[cfg(test)]
mod tests;
