//! A running-config as a tree of commands: each top-level command with its
//! sub-commands (`policy-map` → `class` → `inspect esmtp`).
//!
//! A configuration straight from the firewall indents sub-commands by one
//! space per level, and then the indentation gives the tree. Configurations
//! copied from documents or web pages often lost their indentation; then
//! the tree comes from the vocabulary of each block: a line belongs to the
//! open block when it is one of that block's sub-commands, and starts a new
//! top-level command otherwise.

/// One command line: its number in the file (from 1), its indentation, its
/// text without the indentation, and its words (a `"…"` string is one word,
/// without the quotes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub no: usize,
    pub indent: usize,
    pub text: String,
    pub words: Vec<String>,
}

impl Line {
    pub fn word(&self, i: usize) -> &str {
        self.words.get(i).map_or("", String::as_str)
    }

    /// Whether the line starts with these words (case-insensitive).
    pub fn starts(&self, words: &[&str]) -> bool {
        words.len() <= self.words.len()
            && words
                .iter()
                .zip(&self.words)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
    }

    /// The text after the first `n` words, as written (for a regex).
    pub fn rest_after(&self, n: usize) -> &str {
        let mut rest = self.text.as_str();
        for _ in 0..n {
            rest = rest.trim_start();
            let end = if let Some(quoted) = rest.strip_prefix('"') {
                quoted.find('"').map_or(rest.len(), |i| i + 2)
            } else {
                rest.find(char::is_whitespace).unwrap_or(rest.len())
            };
            rest = &rest[end..];
        }
        rest.trim()
    }
}

/// A command and its sub-commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub line: Line,
    pub children: Vec<Node>,
}

/// Splits `text` into words; `"a b"` is one word.
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            out.push(quoted[..end].to_string());
            rest = quoted.get(end + 1..).unwrap_or("").trim_start();
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            out.push(rest[..end].to_string());
            rest = rest[end..].trim_start();
        }
    }
    out
}

/// The command lines of `text`: comments (`!`, `:`) and blank lines left
/// out.
pub fn lines(text: &str) -> Vec<Line> {
    text.lines()
        .enumerate()
        .filter_map(|(i, raw)| {
            let raw = raw.trim_end_matches('\r');
            let text = raw.trim_start();
            if text.is_empty() || text.starts_with('!') || text.starts_with(':') {
                return None;
            }
            Some(Line {
                no: i + 1,
                indent: raw.len() - text.len(),
                text: text.trim_end().to_string(),
                words: words(text),
            })
        })
        .collect()
}

/// The tree of `text`, by indentation when it has any, else by vocabulary.
pub fn parse(text: &str) -> Vec<Node> {
    let lines = lines(text);
    if lines.iter().any(|l| l.indent > 0) {
        by_indentation(lines)
    } else {
        by_vocabulary(lines)
    }
}

fn by_indentation(lines: Vec<Line>) -> Vec<Node> {
    // A stack of open nodes; each line closes those at its indentation or
    // deeper, then opens itself under the one left on top.
    let mut roots: Vec<Node> = Vec::new();
    let mut stack: Vec<Node> = Vec::new();
    for line in lines {
        while stack.last().is_some_and(|n| n.line.indent >= line.indent) {
            close(&mut stack, &mut roots);
        }
        stack.push(Node {
            line,
            children: Vec::new(),
        });
    }
    while !stack.is_empty() {
        close(&mut stack, &mut roots);
    }
    roots
}

fn close(stack: &mut Vec<Node>, roots: &mut Vec<Node>) {
    let node = stack.pop().expect("a node to close");
    match stack.last_mut() {
        Some(parent) => parent.children.push(node),
        None => roots.push(node),
    }
}

/// What kind of block a node opens, for the vocabulary of its children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    /// `class-map …`: `match` lines.
    ClassMap,
    /// `policy-map NAME`: `class` lines.
    PolicyMap,
    /// `class` in a `policy-map NAME`: its actions.
    PolicyClass,
    /// `policy-map type inspect …`: `parameters`, `match`, `class`.
    InspectMap,
    /// `parameters`, `match` or `class` in an inspect map: their settings
    /// and actions (anything that is not one of the map's own lines).
    InspectItem,
    ObjectNetwork,
    ObjectService,
    ObjectGroup,
    /// A command without sub-commands.
    Leaf,
}

fn block_of(parent: Option<Block>, line: &Line) -> Block {
    let first = line.word(0).to_ascii_lowercase();
    match (parent, first.as_str()) {
        (None, "class-map") => Block::ClassMap,
        (None, "policy-map") if line.starts(&["policy-map", "type", "inspect"]) => {
            Block::InspectMap
        }
        (None, "policy-map") => Block::PolicyMap,
        (None, "object") if line.starts(&["object", "network"]) => Block::ObjectNetwork,
        (None, "object") => Block::ObjectService,
        (None, "object-group") => Block::ObjectGroup,
        (Some(Block::PolicyMap), "class") => Block::PolicyClass,
        (Some(Block::InspectMap), "parameters" | "match" | "class") => Block::InspectItem,
        _ => Block::Leaf,
    }
}

/// Whether `line` is a sub-command of a `block`.
fn accepts(block: Block, line: &Line) -> bool {
    let first = line.word(0).to_ascii_lowercase();
    let first = first.as_str();
    match block {
        Block::ClassMap => matches!(first, "match" | "description"),
        Block::PolicyMap => matches!(first, "class" | "description"),
        Block::PolicyClass => match first {
            "no" => matches!(
                line.word(1).to_ascii_lowercase().as_str(),
                "inspect" | "set" | "police" | "priority" | "shape" | "user-statistics"
            ),
            _ => matches!(
                first,
                "inspect"
                    | "set"
                    | "police"
                    | "priority"
                    | "shape"
                    | "service-policy"
                    | "user-statistics"
                    | "flow-export"
                    | "csc"
                    | "ips"
                    | "sfr"
                    | "cxsc"
            ),
        },
        Block::InspectMap => matches!(first, "parameters" | "match" | "class" | "description"),
        Block::InspectItem => is_inspect_setting(first),
        Block::ObjectNetwork => matches!(
            first,
            "host" | "subnet" | "range" | "fqdn" | "nat" | "description"
        ),
        Block::ObjectService => matches!(first, "service" | "description"),
        Block::ObjectGroup => matches!(
            first,
            "network-object"
                | "group-object"
                | "port-object"
                | "service-object"
                | "protocol-object"
                | "icmp-object"
                | "description"
        ),
        Block::Leaf => false,
    }
}

/// The words an ESMTP inspect map's `parameters` and its `match`/`class`
/// actions start with.
fn is_inspect_setting(first: &str) -> bool {
    matches!(
        first,
        "mask-banner"
            | "mail-relay"
            | "special-character"
            | "allow-tls"
            | "no"
            | "drop-connection"
            | "drop"
            | "reset"
            | "log"
            | "mask"
            | "rate-limit"
            | "send-protocol-error"
    )
}

fn by_vocabulary(lines: Vec<Line>) -> Vec<Node> {
    let mut roots: Vec<Node> = Vec::new();
    // Open nodes with the block each opens.
    let mut stack: Vec<(Node, Block)> = Vec::new();
    for line in lines {
        while let Some((_, block)) = stack.last() {
            if accepts(*block, &line) {
                break;
            }
            let (node, _) = stack.pop().expect("an open node");
            match stack.last_mut() {
                Some((parent, _)) => parent.children.push(node),
                None => roots.push(node),
            }
        }
        let block = block_of(stack.last().map(|(_, b)| *b), &line);
        stack.push((
            Node {
                line,
                children: Vec::new(),
            },
            block,
        ));
    }
    while let Some((node, _)) = stack.pop() {
        match stack.last_mut() {
            Some((parent, _)) => parent.children.push(node),
            None => roots.push(node),
        }
    }
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(nodes: &[Node]) -> Vec<String> {
        let mut out = Vec::new();
        fn walk(n: &Node, depth: usize, out: &mut Vec<String>) {
            out.push(format!(
                "{}{}:{}",
                " ".repeat(depth),
                n.line.no,
                n.line.text
            ));
            for c in &n.children {
                walk(c, depth + 1, out);
            }
        }
        for n in nodes {
            walk(n, 0, &mut out);
        }
        out
    }

    #[test]
    fn words_keep_quoted_strings_whole() {
        assert_eq!(
            words(r#"regex r1 "a b\.c"  x"#),
            ["regex", "r1", r"a b\.c", "x"]
        );
        let l = &lines("regex r1 \"@spam\\.example$\"\n")[0];
        assert_eq!(l.rest_after(2), "\"@spam\\.example$\"");
        let l = &lines("match sender-address regex class bad senders\n")[0];
        assert_eq!(l.rest_after(4), "bad senders");
    }

    #[test]
    fn indentation_gives_the_tree() {
        let text = "! comment\npolicy-map global_policy\n class inspection_default\n  inspect esmtp\n class x\n  no inspect esmtp\nstatic (inside,outside) 1.1.1.1 2.2.2.2\n";
        assert_eq!(
            shape(&parse(text)),
            [
                "2:policy-map global_policy",
                " 3:class inspection_default",
                "  4:inspect esmtp",
                " 5:class x",
                "  6:no inspect esmtp",
                "7:static (inside,outside) 1.1.1.1 2.2.2.2",
            ]
        );
    }

    /// The lines as a document prints them, without indentation.
    #[test]
    fn vocabulary_gives_the_tree_of_flat_text() {
        let text = "access-list a extended permit ip any 192.168.1.1\nclass-map c\nmatch address a\npolicy-map global_policy\nclass c\nno inspect esmtp\nno logging message 1\npolicy-map type inspect esmtp m\nparameters\nmask-banner\nmatch cmd line length gt 512\ndrop-connection log\nmatch not cmd verb HELO\nreset\nstatic (inside,outside) 1.1.1.1 192.168.1.1 netmask 255.255.255.255 tcp 50 100\n";
        assert_eq!(
            shape(&parse(text)),
            [
                "1:access-list a extended permit ip any 192.168.1.1",
                "2:class-map c",
                " 3:match address a",
                "4:policy-map global_policy",
                " 5:class c",
                "  6:no inspect esmtp",
                "7:no logging message 1",
                "8:policy-map type inspect esmtp m",
                " 9:parameters",
                "  10:mask-banner",
                " 11:match cmd line length gt 512",
                "  12:drop-connection log",
                " 13:match not cmd verb HELO",
                "  14:reset",
                "15:static (inside,outside) 1.1.1.1 192.168.1.1 netmask 255.255.255.255 tcp 50 100",
            ]
        );
    }
}
