//! `cargo xtask deb`: the Debian package, `target/deb/inspector_VERSION_ARCH.deb`:
//! the release binary, the systemd unit and its root-only start step,
//! `/etc/inspector/policy.toml` and `/etc/default/inspector` as conffiles,
//! the man pages `inspector(8)` (from the clap definitions, `inspector
//! generate man`) and `inspector-policy(5)` (from docs/policy.md), shell
//! completions (`inspector generate completions`). Built with `dpkg-deb`
//! from a staged tree: nothing to install beyond dpkg, and the maintainer
//! scripts are ours to read. `check` is what `cargo xtask test` runs after
//! the tests: the contents, an install into a throwaway root, the unit
//! from it under `systemd-analyze verify`, and lintian when it is there.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

use crate::{build_release, inspector_binary, status, workspace_root};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn arch() -> Result<String> {
    let out = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .context("dpkg")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn deb_path() -> Result<PathBuf> {
    Ok(workspace_root().join(format!("target/deb/inspector_{VERSION}_{}.deb", arch()?)))
}

/// Builds the package; returns its path.
pub fn build() -> Result<PathBuf> {
    build_release()?;
    let root = workspace_root();
    let stage = root.join("target/deb/stage");
    let _ = fs::remove_dir_all(&stage);
    let put = |rel: &str, from: &Path, mode: u32| -> Result<()> {
        let to = stage.join(rel);
        fs::create_dir_all(to.parent().unwrap())?;
        fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
        set_mode(&to, mode)
    };
    let write = |rel: &str, text: &str, mode: u32| -> Result<()> {
        let to = stage.join(rel);
        fs::create_dir_all(to.parent().unwrap())?;
        fs::write(&to, text)?;
        set_mode(&to, mode)
    };
    put("usr/sbin/inspector", &inspector_binary(), 0o755)?;
    put(
        "lib/systemd/system/inspector.service",
        &root.join("deploy/systemd/inspector.service"),
        0o644,
    )?;
    put(
        "usr/lib/inspector/prepare-bpffs",
        &root.join("deploy/systemd/prepare-bpffs"),
        0o755,
    )?;
    put(
        "etc/inspector/policy.toml",
        &root.join("policies/default.toml"),
        0o644,
    )?;
    // A cluster member's BGP announcement follows its readiness (docs/cluster.md).
    put(
        "usr/sbin/inspector-announce",
        &root.join("deploy/bird/inspector-announce"),
        0o755,
    )?;
    // What operators adapt rather than run: scrape and alert rules, a
    // dashboard, a DaemonSet.
    for example in [
        "prometheus/alerts.yml",
        "prometheus/cluster.yml",
        "prometheus/cluster-rules.yml",
        "grafana/inspector.json",
        "kubernetes/daemonset.yaml",
    ] {
        put(
            &format!("usr/share/doc/inspector/examples/{example}"),
            &root.join("deploy").join(example),
            0o644,
        )?;
    }
    write("etc/default/inspector", DEFAULTS, 0o644)?;
    write(
        "usr/share/doc/inspector/copyright",
        &format!(
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: inspector\n\nFiles: *\nCopyright: the inspector authors\nLicense: {}\n",
            "MIT or Apache-2.0"
        ),
        0o644,
    )?;

    // Man pages and completions, from the binary just built.
    let generated = root.join("target/deb/generated");
    let _ = fs::remove_dir_all(&generated);
    status(
        Command::new(inspector_binary())
            .args(["generate", "man"])
            .arg(&generated),
    )?;
    status(
        Command::new(inspector_binary())
            .args(["generate", "completions"])
            .arg(&generated),
    )?;
    fs::write(
        generated.join("inspector-policy.5"),
        markdown_to_man(
            &fs::read_to_string(root.join("docs/policy.md"))?,
            "inspector-policy",
            "5",
        ),
    )?;
    for (file, rel) in [
        ("inspector.8", "usr/share/man/man8/inspector.8"),
        (
            "inspector-policy.5",
            "usr/share/man/man5/inspector-policy.5",
        ),
    ] {
        put(rel, &generated.join(file), 0o644)?;
        status(Command::new("gzip").args(["-9n"]).arg(stage.join(rel)))?;
    }
    put(
        "usr/share/bash-completion/completions/inspector",
        &generated.join("inspector.bash"),
        0o644,
    )?;
    put(
        "usr/share/zsh/vendor-completions/_inspector",
        &generated.join("_inspector"),
        0o644,
    )?;
    put(
        "usr/share/fish/vendor_completions.d/inspector.fish",
        &generated.join("inspector.fish"),
        0o644,
    )?;

    let size_kb = dir_size(&stage)? / 1024;
    write(
        "DEBIAN/control",
        &format!(
            "Package: inspector\nVersion: {VERSION}\nArchitecture: {}\nMaintainer: inspector developers <inspector@localhost>\nInstalled-Size: {size_kb}\nDepends: libc6, adduser, util-linux\nRecommends: systemd\nSection: net\nPriority: optional\nDescription: eBPF/XDP ESMTP inspector\n The controls of a firewall's ESMTP inspection (allowed commands, line\n and recipient limits, banner masking, connection limits with TCP\n intercept, exemptions) in XDP and TC programs and a userspace proxy.\n",
            arch()?
        ),
        0o644,
    )?;
    write(
        "DEBIAN/conffiles",
        "/etc/inspector/policy.toml\n/etc/default/inspector\n",
        0o644,
    )?;
    write("DEBIAN/postinst", POSTINST, 0o755)?;
    write("DEBIAN/postrm", POSTRM, 0o755)?;
    let deb = deb_path()?;
    status(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    eprintln!("deb: {}", deb.display());
    Ok(deb)
}

/// The package's checks (see the module's comment).
pub fn check(deb: &Path) -> Result<()> {
    let out = Command::new("dpkg-deb").arg("-c").arg(deb).output()?;
    let listing = String::from_utf8_lossy(&out.stdout);
    for path in [
        "./usr/sbin/inspector",
        "./lib/systemd/system/inspector.service",
        "./usr/lib/inspector/prepare-bpffs",
        "./usr/sbin/inspector-announce",
        "./usr/share/doc/inspector/examples/prometheus/alerts.yml",
        "./etc/inspector/policy.toml",
        "./usr/share/man/man8/inspector.8.gz",
        "./usr/share/man/man5/inspector-policy.5.gz",
        "./usr/share/bash-completion/completions/inspector",
    ] {
        ensure!(
            listing.lines().any(|l| l.ends_with(path)),
            "{path} missing from the package:\n{listing}"
        );
    }
    let out = Command::new("dpkg-deb").args(["-f"]).arg(deb).output()?;
    ensure!(String::from_utf8_lossy(&out.stdout).contains("Package: inspector"));
    let root = workspace_root().join("target/deb/root");
    let _ = fs::remove_dir_all(&root);
    status(Command::new("dpkg").arg("-x").arg(deb).arg(&root))?;
    let control = workspace_root().join("target/deb/control");
    let _ = fs::remove_dir_all(&control);
    status(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&control))?;
    ensure!(
        fs::read_to_string(control.join("conffiles"))?.contains("/etc/inspector/policy.toml"),
        "the policy is not a conffile"
    );
    let bin = root.join("usr/sbin/inspector");
    let out = Command::new(&bin).arg("--version").output()?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains(VERSION),
        "the installed binary does not run"
    );
    let out = Command::new(&bin)
        .args(["policy", "check"])
        .arg(root.join("etc/inspector/policy.toml"))
        .output()?;
    ensure!(out.status.success(), "the shipped policy is refused");
    for page in [
        "usr/share/man/man8/inspector.8.gz",
        "usr/share/man/man5/inspector-policy.5.gz",
    ] {
        let out = Command::new("man")
            .arg("-l")
            .arg(root.join(page))
            .output()?;
        ensure!(
            out.status.success() && out.stdout.len() > 500,
            "{page} does not render"
        );
    }
    // The installed unit, with the installed paths.
    let unit = fs::read_to_string(root.join("lib/systemd/system/inspector.service"))?
        .replace("/usr/sbin/inspector", bin.to_str().unwrap())
        .replace(
            "/usr/lib/inspector/prepare-bpffs",
            root.join("usr/lib/inspector/prepare-bpffs")
                .to_str()
                .unwrap(),
        )
        .replace(
            "Documentation=man:inspector(8) man:inspector-policy(5)\n",
            "",
        );
    let unit_path = workspace_root().join("target/deb/inspector.service");
    fs::write(&unit_path, unit)?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_path)
        .output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || said.contains("inspector.service:") {
        bail!("systemd-analyze verify: {said}");
    }
    if Command::new("lintian").arg("--version").output().is_ok() {
        // Informational: the package is not uploaded to Debian.
        let _ = status(
            Command::new("lintian")
                .args(["--no-tag-display-limit"])
                .arg(deb),
        );
    } else {
        eprintln!("deb: lintian is not installed; skipped");
    }
    let _ = fs::remove_dir_all(&root);
    eprintln!("deb: {} checked", deb.display());
    Ok(())
}

const DEFAULTS: &str = "# Options for `inspector run` under systemd (inspector.service).\n# The interfaces to inspect, e.g.:\n#INSPECTOR_ARGS=\"--iface eth0 --iface eth1\"\nINSPECTOR_ARGS=\"\"\n";

const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if ! getent passwd inspector >/dev/null; then
        adduser --system --group --no-create-home --home /nonexistent inspector
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
fi
exit 0
"#;

const POSTRM: &str = r#"#!/bin/sh
set -e
if [ "$1" = purge ]; then
    rm -rf /var/lib/inspector /var/log/inspector
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
exit 0
"#;

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// The reference in docs/ as a man page: headings, paragraphs, lists, code
/// blocks and tables (as preformatted text), inline code in bold.
pub fn markdown_to_man(md: &str, name: &str, section: &str) -> String {
    let mut out = format!(
        ".TH {} {section} \"\" \"inspector {VERSION}\"\n.SH NAME\n{name} \\- the inspector's policy file\n",
        name.to_uppercase()
    );
    let mut code = false;
    for line in md.lines() {
        if line.starts_with("```") {
            out += if code { ".fi\n.RE\n" } else { ".RS\n.nf\n" };
            code = !code;
            continue;
        }
        if code {
            let _ = writeln!(out, "{}", escape(line));
            continue;
        }
        if let Some(h) = line.strip_prefix("# ") {
            let _ = writeln!(out, ".SH DESCRIPTION\n{}", inline(h));
        } else if let Some(h) = line.strip_prefix("## ") {
            let _ = writeln!(out, ".SH \"{}\"", strip(h).to_uppercase());
        } else if let Some(h) = line.strip_prefix("### ") {
            let _ = writeln!(out, ".SS \"{}\"", strip(h));
        } else if line.starts_with('|') {
            if line.contains("---") {
                continue;
            }
            let cells: Vec<String> = line
                .trim_matches('|')
                .split(" | ")
                .map(|c| inline(c.trim()))
                .collect();
            let _ = writeln!(out, ".TP\n{}\n{}", cells[0], cells[1..].join(" \\(em "));
        } else if let Some(item) = line.strip_prefix("- ") {
            let _ = writeln!(out, ".IP \\(bu 2\n{}", inline(item));
        } else if line.trim().is_empty() {
            out += ".PP\n";
        } else {
            let _ = writeln!(out, "{}", inline(line.trim_start()));
        }
    }
    out
}

fn escape(s: &str) -> String {
    let s = s.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

/// Text without its markup: `code` and [links](…).
fn strip(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('[') {
        out += &rest[..i];
        let after = &rest[i + 1..];
        match (after.find("]("), after.find(')')) {
            (Some(close), Some(end)) if close < end => {
                out += &after[..close];
                rest = &after[end + 1..];
            }
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out += rest;
    out.replace('`', "")
}

fn inline(s: &str) -> String {
    let text = escape(&strip_links(s));
    // `code` in bold.
    let mut out = String::new();
    for (i, part) in text.split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "\\fB{part}\\fR");
        } else {
            out += part;
        }
    }
    out
}

fn strip_links(s: &str) -> String {
    // Keep backticks for `inline`; drop link targets.
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("](") {
        let Some(open) = rest[..i].rfind('[') else {
            break;
        };
        let Some(end) = rest[i..].find(')') else {
            break;
        };
        out += &rest[..open];
        out += &rest[open + 1..i];
        rest = &rest[i + end + 1..];
    }
    out += rest;
    out
}
