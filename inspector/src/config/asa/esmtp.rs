//! `policy-map type inspect esmtp NAME` into the `[esmtp]` table: its
//! `parameters`, each `match [not] …` with its actions, `class` lines of
//! `class-map type inspect esmtp` groups, and the `regex` objects and
//! `class-map type regex` groups the criteria name.

use std::collections::HashMap;

use inspector_esmtp::policy::{EsmtpPolicy, parse};

use super::{Diagnostics, lines::Node};

/// The `[esmtp]` table to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EsmtpOut {
    pub name: String,
    /// Where it comes from, for the comment above the table.
    pub origin: String,
    pub mask_banner: bool,
    /// `None`: not allowed; `Some(log)`.
    pub allow_tls: Option<bool>,
    pub special_character: Option<String>,
    /// (domain, action).
    pub mail_relay: Option<(String, String)>,
    pub rules: Vec<RuleOut>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleOut {
    /// The `match` string, as the policy file writes it.
    pub criterion: String,
    pub action: String,
    /// The configuration lines it comes from.
    pub comment: String,
}

/// The regular expressions of a configuration: `regex NAME "R"` and
/// `class-map type regex match-any NAME` groups of them.
#[derive(Debug, Default)]
pub struct Regexes {
    pub objects: HashMap<String, (String, usize)>,
    /// Group name → its members' names, and its line.
    pub classes: HashMap<String, (Vec<String>, usize)>,
}

impl EsmtpOut {
    /// The firewall's `_default_esmtp_map`, the map `inspect esmtp` uses
    /// without a name.
    pub fn default_map(origin: impl Into<String>) -> Self {
        let p = EsmtpPolicy::default();
        Self {
            name: p.name.clone(),
            origin: origin.into(),
            mask_banner: p.mask_banner,
            allow_tls: p.allow_tls,
            special_character: p.special_character.map(|a| a.to_string()),
            mail_relay: p
                .mail_relay
                .map(|m| (m.domain.clone(), m.actions.to_string())),
            rules: p
                .rules
                .iter()
                .map(|r| RuleOut {
                    criterion: r.text().trim_start_matches("match ").to_string(),
                    action: r.actions.to_string(),
                    comment: "the firewall's default".into(),
                })
                .collect(),
        }
    }
}

/// Translates an inspect map. `classes` are the `class-map type inspect
/// esmtp` nodes by name.
pub fn translate(
    map: &Node,
    classes: &HashMap<String, &Node>,
    regexes: &Regexes,
    diags: &mut Diagnostics,
) -> EsmtpOut {
    let name = map.line.word(4).to_string();
    let mut out = EsmtpOut {
        name: name.clone(),
        origin: format!("line {}: {}", map.line.no, map.line.text),
        // A map of one's own starts with every parameter off; only the
        // firewall's `_default_esmtp_map` masks the banner.
        mask_banner: false,
        allow_tls: None,
        special_character: None,
        mail_relay: None,
        rules: Vec::new(),
    };
    for item in &map.children {
        let l = &item.line;
        match l.word(0).to_ascii_lowercase().as_str() {
            "description" => {}
            "parameters" => {
                for p in &item.children {
                    parameter(&p.line, &mut out, diags);
                }
            }
            "match" => {
                if let Some(rule) = rule(item, regexes, diags, None) {
                    out.rules.push(rule);
                }
            }
            "class" => class(item, classes, regexes, &mut out, diags),
            _ => diags.warn(l.no, format!("`{}`: not translated", l.text)),
        }
    }
    out
}

/// One line of `parameters`.
fn parameter(l: &super::lines::Line, out: &mut EsmtpOut, diags: &mut Diagnostics) {
    let (negated, at) = if l.starts(&["no"]) {
        (true, 1)
    } else {
        (false, 0)
    };
    let action = |from: usize| -> Option<String> {
        // `… action drop-connection log`
        (l.word(from).eq_ignore_ascii_case("action")).then(|| l.words[from + 1..].join(" "))
    };
    match l.word(at).to_ascii_lowercase().as_str() {
        "mask-banner" => out.mask_banner = !negated,
        "allow-tls" if negated => out.allow_tls = None,
        "allow-tls" => {
            out.allow_tls = match action(1).as_deref() {
                None => Some(false),
                Some(a) if a.eq_ignore_ascii_case("log") => Some(true),
                Some(a) => {
                    diags.warn(l.no, format!("`allow-tls action {a}`: only `log` is an action of allow-tls; allowed without it"));
                    Some(false)
                }
            }
        }
        "special-character" if negated => out.special_character = None,
        "special-character" => match action(1).map(|a| checked_param_action(&a)) {
            Some(Ok(a)) => out.special_character = Some(a),
            Some(Err(e)) => diags.warn(l.no, format!("`{}`: {e}; not translated", l.text)),
            None => diags.warn(
                l.no,
                format!("`{}`: expected `action …`; not translated", l.text),
            ),
        },
        "mail-relay" if negated => out.mail_relay = None,
        "mail-relay" => {
            let domain = l.word(1).to_string();
            match action(2).map(|a| checked_param_action(&a)) {
                Some(Ok(a)) if !domain.is_empty() => out.mail_relay = Some((domain, a)),
                Some(Err(e)) => diags.warn(l.no, format!("`{}`: {e}; not translated", l.text)),
                _ => diags.warn(
                    l.no,
                    format!(
                        "`{}`: expected `mail-relay DOMAIN action …`; not translated",
                        l.text
                    ),
                ),
            }
        }
        _ => diags.warn(
            l.no,
            format!(
                "`{}`: not an ESMTP parameter the inspector has; not translated",
                l.text
            ),
        ),
    }
}

fn checked_param_action(action: &str) -> Result<String, String> {
    parse::parse_param_actions(action).map(|a| a.to_string())
}

/// A `match` line and its actions (or, for a line of a `class-map type
/// inspect esmtp`, the actions of the `class` line that names it).
fn rule(
    item: &Node,
    regexes: &Regexes,
    diags: &mut Diagnostics,
    class_actions: Option<&[Node]>,
) -> Option<RuleOut> {
    let l = &item.line;
    let criterion = match criterion(l, regexes) {
        Ok(c) => c,
        Err(e) => {
            diags.warn(l.no, format!("`{}`: {e}; not translated", l.text));
            return None;
        }
    };
    let action_nodes = class_actions.unwrap_or(&item.children);
    let action = action_nodes
        .iter()
        .map(|n| n.line.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let action_lines = action_nodes
        .iter()
        .map(|n| n.line.no.to_string())
        .collect::<Vec<_>>();
    if action.is_empty() {
        diags.warn(
            l.no,
            format!(
                "`{}` has no action (the firewall only counts it); not translated",
                l.text
            ),
        );
        return None;
    }
    let checked = parse::parse_match(&criterion).and_then(|(_, c)| {
        let actions = parse::parse_actions(&action)?;
        parse::check_actions(&c, &actions)?;
        Ok(actions.to_string())
    });
    match checked {
        Ok(action) => Some(RuleOut {
            criterion,
            action,
            comment: format!(
                "line {}: {}; action on line{} {}",
                l.no,
                l.text,
                plural(&action_lines),
                action_lines.join(", ")
            ),
        }),
        Err(e) => {
            diags.warn(
                l.no,
                format!("`{}` / `{action}`: {e}; not translated", l.text),
            );
            None
        }
    }
}

fn plural(items: &[String]) -> &'static str {
    if items.len() == 1 { "" } else { "s" }
}

/// The `match` string of a criterion line: the words after `match`, with a
/// named regex (`regex NAME`, `regex class NAME`) replaced by its pattern.
fn criterion(l: &super::lines::Line, regexes: &Regexes) -> Result<String, String> {
    let words = &l.words[1..];
    let Some(at) = words.iter().position(|w| w.eq_ignore_ascii_case("regex")) else {
        return Ok(words.join(" "));
    };
    let head = words[..=at].join(" ");
    let pattern = if words
        .get(at + 1)
        .is_some_and(|w| w.eq_ignore_ascii_case("class"))
    {
        let name = words.get(at + 2).ok_or("a regex class name is missing")?;
        let (members, _) = regexes
            .classes
            .get(name.as_str())
            .ok_or_else(|| format!("no `class-map type regex {name}`"))?;
        let mut parts = Vec::new();
        for m in members {
            let (p, _) = regexes
                .objects
                .get(m)
                .ok_or_else(|| format!("`regex {m}` (in class {name}) is not defined"))?;
            parts.push(format!("(?:{p})"));
        }
        if parts.is_empty() {
            return Err(format!("`class-map type regex {name}` has no regex"));
        }
        parts.join("|")
    } else {
        let name = words.get(at + 1).ok_or("a regex name is missing")?;
        regexes
            .objects
            .get(name.as_str())
            .map(|(p, _)| p.clone())
            .ok_or_else(|| format!("`regex {name}` is not defined"))?
    };
    Ok(format!("{head} {pattern}"))
}

/// `class NAME` in an inspect map: the `match` lines of the `class-map type
/// inspect esmtp NAME`, each with the class's actions.
fn class(
    item: &Node,
    classes: &HashMap<String, &Node>,
    regexes: &Regexes,
    out: &mut EsmtpOut,
    diags: &mut Diagnostics,
) {
    let l = &item.line;
    let name = l.word(1);
    let Some(class_map) = classes.get(name) else {
        diags.warn(
            l.no,
            format!("`class {name}`: no `class-map type inspect esmtp {name}`; not translated"),
        );
        return;
    };
    let matches: Vec<&Node> = class_map
        .children
        .iter()
        .filter(|c| c.line.starts(&["match"]))
        .collect();
    let any = class_map
        .line
        .words
        .iter()
        .any(|w| w.eq_ignore_ascii_case("match-any"));
    if matches.len() > 1 && !any {
        diags.warn(
            class_map.line.no,
            format!(
                "`{}`: all of {} criteria at once (match-all) cannot be expressed, each rule has one criterion; class {name} not translated",
                class_map.line.text,
                matches.len()
            ),
        );
        return;
    }
    if matches.is_empty() {
        diags.warn(
            class_map.line.no,
            format!("class {name} has no criterion; not translated"),
        );
        return;
    }
    if matches.len() > 1 {
        diags.note(
            class_map.line.no,
            format!(
                "class {name} (match-any, {} criteria): one rule per criterion, each with the class's action and its own counter",
                matches.len()
            ),
        );
    }
    for m in matches {
        if let Some(mut rule) = rule(m, regexes, diags, Some(&item.children)) {
            rule.comment = format!(
                "line {}: {} (class-map {name}); class line {}, action {}",
                m.line.no,
                m.line.text,
                l.no,
                item.children
                    .iter()
                    .map(|n| n.line.no.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            out.rules.push(rule);
        }
    }
}

/// Reads `regex` objects and `class-map type regex` groups.
pub fn regexes(roots: &[Node], diags: &mut Diagnostics) -> Regexes {
    let mut out = Regexes::default();
    for node in roots {
        let l = &node.line;
        if l.starts(&["regex"]) {
            let pattern = l.rest_after(2);
            let pattern = pattern
                .strip_prefix('"')
                .and_then(|p| p.strip_suffix('"'))
                .unwrap_or(pattern);
            if pattern.is_empty() {
                diags.warn(l.no, "a regex without a pattern; not translated");
                continue;
            }
            out.objects
                .insert(l.word(1).to_string(), (pattern.to_string(), l.no));
        } else if l.starts(&["class-map", "type", "regex"]) {
            let name = l.words.last().cloned().unwrap_or_default();
            if !l.words.iter().any(|w| w.eq_ignore_ascii_case("match-any")) {
                diags.warn(
                    l.no,
                    "a regex class matches when any of its regexes matches (match-any); read as such",
                );
            }
            let members = node
                .children
                .iter()
                .filter(|c| c.line.starts(&["match", "regex"]))
                .map(|c| c.line.word(2).to_string())
                .collect();
            out.classes.insert(name, (members, l.no));
        }
    }
    out
}
