//! The upstream mode at start: which mode the proxy's connections to the
//! servers use, verified where it can be and said in the log (and, through
//! [`Upstream::status`], in `inspector status`).
//!
//! Transparent (`auto`, the default, and `client`) needs two things the
//! daemon can arrange or check: the return steering on the interface of the
//! route to each server ([`ReturnSteering`]), and the server's answers to a
//! client's address coming back through this gateway, which only a probe
//! shows: a connection from an address on the clients' side that is not
//! the gateway's own (see [`upstream::probe_source`]). The protected
//! servers of the policy are probed at start; a server seen first in a
//! session is learned then (route, steering) and its first session is the
//! probe. A probe that gets no answer makes `auto` use the gateway's
//! address for that server (a warning, repeated in `inspector status`) and
//! makes an explicit `client` refuse to start, naming the server.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Result, bail};
use futures_util::future::join_all;
use rtnetlink::Handle;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

use crate::{
    config::{GATEWAY_WARNING, Policy, UpstreamSource},
    kernel::{routing, steer},
    proxy::upstream::{self, Mode, PathState, Probe, ServerPath, Upstream},
};

/// The return steering the daemon attached, to remove on stop.
pub struct ReturnSteering {
    pin_dir: PathBuf,
    /// The inspected interfaces: `inspector_steer` there already marks the
    /// servers' answers.
    inspected: Vec<String>,
    attached: BTreeSet<String>,
}

impl ReturnSteering {
    pub fn new(pin_dir: &Path, inspected: &[String]) -> Self {
        Self {
            pin_dir: pin_dir.to_path_buf(),
            inspected: inspected.to_vec(),
            attached: BTreeSet::new(),
        }
    }

    /// Looks up the route to `server` and attaches `inspector_steer_return`
    /// to its interface, unless that one is inspected or has it already;
    /// returns the interface.
    pub async fn prepare(
        &mut self,
        ebpf: &mut aya::Ebpf,
        netlink: &Handle,
        server: IpAddr,
    ) -> Result<String> {
        let route = routing::route_to(netlink, server).await?;
        let iface = route.iface;
        if !self.inspected.contains(&iface) && !self.attached.contains(&iface) {
            steer::attach_return(ebpf, &iface, &self.pin_dir)?;
            log::info!(
                "{iface}: return steering attached (TC ingress): the servers' answers to the proxy's transparent connections"
            );
            self.attached.insert(iface.clone());
        }
        Ok(iface)
    }

    /// Detaches what [`Self::prepare`] attached.
    pub fn remove(&self) -> Result<()> {
        let mut result = Ok(());
        for iface in &self.attached {
            if let Err(e) = steer::detach(&steer::return_link_pin(&self.pin_dir, iface)) {
                result = Err(e);
            }
        }
        result
    }
}

/// Decides and says the upstream mode at start (see the module's doc);
/// fails only for an explicit `client` whose protected servers' return
/// path does not answer.
pub async fn start(
    upstream: &Upstream,
    policy: &Policy,
    ebpf: &mut aya::Ebpf,
    netlink: &Handle,
    steering: &mut ReturnSteering,
) -> Result<()> {
    let mut servers: Vec<IpAddr> = policy.servers.iter().map(|s| s.address).collect();
    // The probes at start go to the first inspected port (25 by default).
    let port = policy.esmtp.ports[0];
    servers.sort();
    servers.dedup();
    match upstream.configured() {
        UpstreamSource::Gateway => {
            log::warn!("upstream-source = \"gateway\": {GATEWAY_WARNING}");
        }
        UpstreamSource::Proxy => {}
        UpstreamSource::Xclient => {
            let checks = servers
                .iter()
                .map(|&s| check_xclient(SocketAddr::new(s, port), &upstream.helo_name));
            for (server, found) in servers.iter().zip(join_all(checks).await) {
                let (state, reason) = match found {
                    Ok(true) => (
                        PathState::None,
                        "the server offers XCLIENT to the gateway".to_string(),
                    ),
                    Ok(false) => {
                        log::warn!(
                            "{server}: the server does not offer XCLIENT to the gateway: its sessions will be refused with 421 until it does (Postfix: smtpd_authorized_xclient_hosts)"
                        );
                        (PathState::Failed, "the server does not offer XCLIENT to the gateway: sessions are refused (421 4.3.5)".to_string())
                    }
                    Err(e) => (
                        PathState::Unverified,
                        format!("not checked at start: {e:#}"),
                    ),
                };
                upstream.set_server(ServerPath {
                    address: *server,
                    interface: None,
                    mode: Mode::Xclient,
                    state,
                    reason,
                    listed: true,
                });
            }
        }
        UpstreamSource::Auto | UpstreamSource::Client => {
            verify_transparent(upstream, &servers, port, ebpf, netlink, steering).await?;
        }
    }
    let status = upstream.status();
    log::info!(
        "upstream: {} ({}): the server sees {}; {}",
        status.mode.name(),
        status.configured,
        status.mode.server_sees(),
        status.reason
    );
    for s in &status.servers {
        log::info!(
            "upstream: {}{}: {}, {}",
            s.address,
            s.interface
                .as_ref()
                .map_or(String::new(), |i| format!(" (via {i})")),
            s.mode.name(),
            s.reason
        );
    }
    if let Some(warning) = &status.warning
        && status.mode != Mode::Gateway
    {
        log::warn!("upstream: {warning}");
    }
    Ok(())
}

/// Routes, return steering and one probe per protected server.
async fn verify_transparent(
    upstream: &Upstream,
    servers: &[IpAddr],
    port: u16,
    ebpf: &mut aya::Ebpf,
    netlink: &Handle,
    steering: &mut ReturnSteering,
) -> Result<()> {
    let explicit = upstream.configured() == UpstreamSource::Client;
    let mut routes = Vec::new();
    for &server in servers {
        routes.push(steering.prepare(ebpf, netlink, server).await);
    }
    // The clients' side: the inspected interfaces that face no server
    // (all of them when each faces one).
    let facing: BTreeSet<&String> = routes.iter().flatten().collect();
    let mut nets = Vec::new();
    let mut fallback = Vec::new();
    for iface in &steering.inspected {
        let addrs = routing::addresses_of(netlink, routing::iface_index(iface)?).await?;
        if facing.contains(iface) {
            fallback.extend(addrs);
        } else {
            nets.extend(addrs);
        }
    }
    nets.extend(fallback);
    let is_local = |ip| std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok();
    let probes = servers.iter().zip(&routes).map(|(&server, route)| {
        let source = upstream::probe_source(&nets, server, is_local);
        async move {
            let probe = match (route, source) {
                (Err(e), _) => Probe::Error(format!("{e:#}")),
                (_, None) => Probe::Error(
                    "no address to probe from: the inspected interfaces have no prefix with room for one".into(),
                ),
                (Ok(_), Some(src)) => upstream::probe(src, SocketAddr::new(server, port)).await,
            };
            (source, probe)
        }
    });
    let mut failed = Vec::new();
    for ((&server, route), (source, probe)) in
        servers.iter().zip(&routes).zip(join_all(probes).await)
    {
        let from = source.map_or(String::new(), |s| format!(" from {s}"));
        let (mode, state, reason) = match &probe {
            Probe::Answered(how) => (
                Mode::Client,
                PathState::Verified,
                format!("return path verified at start: a probe{from} was answered ({how})"),
            ),
            Probe::NoAnswer => (
                Mode::Gateway,
                PathState::Failed,
                format!(
                    "a probe{from} got no answer within {:?}: the server's route to the clients does not go through this gateway",
                    upstream::PROBE_TIMEOUT
                ),
            ),
            Probe::Error(e) => (
                Mode::Gateway,
                PathState::Failed,
                format!("not verified: {e}"),
            ),
        };
        if state == PathState::Failed {
            failed.push(format!("{server}: {reason}"));
        }
        upstream.set_server(ServerPath {
            address: server,
            interface: route.as_ref().ok().cloned(),
            mode: if explicit { Mode::Client } else { mode },
            state,
            reason,
            listed: true,
        });
    }
    if explicit && !failed.is_empty() {
        bail!(
            "upstream-source = \"client\" cannot work: {}; route the servers' traffic to the clients through this gateway, or use \"xclient\" or \"proxy\" (or leave upstream-source out: the gateway's address then, with a warning)",
            failed.join("; ")
        );
    }
    Ok(())
}

/// Whether `server` offers XCLIENT to the gateway: its greeting, our
/// EHLO, QUIT.
async fn check_xclient(server: SocketAddr, helo: &str) -> Result<bool> {
    let exchange = async {
        let mut stream = TcpStream::connect(server).await?;
        let mut buf = Vec::new();
        let greeting = read_reply(&mut stream, &mut buf).await?;
        if greeting.code != 220 {
            bail!("the server greets with {}", greeting.code);
        }
        stream
            .write_all(format!("EHLO {helo}\r\n").as_bytes())
            .await?;
        let ehlo = read_reply(&mut stream, &mut buf).await?;
        let _ = stream.write_all(b"QUIT\r\n").await;
        Ok(upstream::xclient_offered(&ehlo)
            .is_some_and(|a| a.iter().any(|a| a.eq_ignore_ascii_case("ADDR"))))
    };
    match timeout(Duration::from_secs(5), exchange).await {
        Ok(r) => r,
        Err(_) => bail!("no answer within 5 s"),
    }
}

async fn read_reply(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<upstream::Reply> {
    loop {
        if let Some(r) = upstream::take_reply(buf) {
            return r.map_err(anyhow::Error::msg);
        }
        if buf.len() > 64 * 1024 {
            bail!("a reply too long");
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
