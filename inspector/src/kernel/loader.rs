//! Loads the kernel object with its maps pinned under the pin directory and
//! attaches the classifier.

use std::path::Path;

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::HashMap,
    programs::{ProgramError, Xdp, XdpMode},
};
use inspector_common::{XDP_CONFIG_MAP, XdpConfig, programs};

/// The kernel programs, built by build.rs from inspector-ebpf.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/inspector"));

/// Loads the object. Maps already pinned in `pin_dir` are reused (that is how
/// exemptions and counters survive a restart); missing ones are created and
/// pinned. The programs are loaded (verified) but not attached.
pub fn load(pin_dir: &Path) -> Result<Ebpf> {
    drop_stale_flows(pin_dir)?;
    drop_stale_counters(pin_dir)?;
    drop_stale_server_counts(pin_dir)?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .load(OBJECT)
        .with_context(|| {
            format!(
                "loading the kernel programs (maps in {})",
                pin_dir.display()
            )
        })?;
    let xdp = xdp_program(&mut ebpf)?;
    xdp.load().context("verifying the XDP classifier")?;
    Ok(ebpf)
}

/// Loads the object with only its pass-only XDP program verified, for the
/// far end of a veth whose near end runs ours natively: a veth delivers
/// native `XDP_TX` frames only to a peer that has an XDP program (the
/// kernel's `xdp_synproxy` selftest attaches a dummy one for the same
/// reason). Its maps are pinned in `pin_dir`, apart from the daemon's.
pub fn load_pass_only(pin_dir: &Path) -> Result<Ebpf> {
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .load(OBJECT)
        .context("loading the kernel programs")?;
    pass_only(&mut ebpf)?
        .load()
        .context("verifying the pass-only XDP program")?;
    Ok(ebpf)
}

/// Attaches the pass-only program of [`load_pass_only`] to `iface` in
/// native mode; it stays attached while `ebpf` lives.
pub fn attach_pass_only(ebpf: &mut Ebpf, iface: &str) -> Result<()> {
    pass_only(ebpf)?
        .attach(iface, XdpMode::Driver)
        .map(drop)
        .map_err(|e| explain(e, iface))
}

fn pass_only(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    Ok(ebpf
        .program_mut(programs::XDP_EMPTY)
        .context("the object has no pass-only XDP program")?
        .try_into()?)
}

/// Removes a flow table pinned by a version whose entries had another
/// size (they grew by the sequence numbers of `FlowEntry::server_next`):
/// reused, it would fail the verifier. And the flow table and its marks
/// (`FLOW_MARKS`) go together: a table without its marks (pinned before
/// they existed), or with marks of another layout, would hold flows
/// marked nowhere, whose SYNs the kernel would take for new ones. Their
/// flows are forgotten: the sweeper's next pass recounts from the new,
/// empty table, and connections open since then go uncounted like any
/// that predate the daemon.
fn drop_stale_flows(pin_dir: &Path) -> Result<()> {
    let path = super::bpffs::map_path(pin_dir, inspector_common::maps::FLOWS);
    let marks = super::bpffs::map_path(pin_dir, inspector_common::maps::FLOW_MARKS);
    let value_size = |path: &Path| -> Result<Option<usize>> {
        Ok(pinned_info(path)?.map(|info| info.value_size() as usize))
    };
    let ours = std::mem::size_of::<inspector_common::FlowEntry>();
    let marks_size = std::mem::size_of::<inspector_common::FlowMarks>();
    let stale = match (value_size(&path)?, value_size(&marks)?) {
        (None, _) => None,
        (Some(size), _) if size != ours => Some(format!(
            "entries of {size} bytes, an older version's; replaced by a table of {ours}-byte entries"
        )),
        (Some(_), None) => {
            Some("pinned without its marks; replaced by a new table with them".into())
        }
        (Some(_), Some(size)) if size != marks_size => Some(format!(
            "its marks are {size} bytes, an older version's; both replaced"
        )),
        (Some(_), Some(_)) => None,
    };
    if let Some(why) = stale {
        log::warn!("{}: {why} (its flows are forgotten)", path.display());
        remove_pin(&path)?;
    }
    if !path.exists() && marks.exists() {
        // Marks without their table count flows that are gone.
        remove_pin(&marks)?;
    }
    Ok(())
}

/// Removes intercept counters pinned by a version that counted fewer
/// events: the loader would reuse them as they are (it does not compare
/// a pinned map's size with the object's), the new events would count
/// nowhere and reading them would fail. Their counts start again from
/// zero, a reset Prometheus' counters allow for.
fn drop_stale_counters(pin_dir: &Path) -> Result<()> {
    let path = super::bpffs::map_path(pin_dir, inspector_common::maps::INTERCEPTS);
    let Some(info) = pinned_info(&path)? else {
        return Ok(());
    };
    let (events, ours) = (info.max_entries(), inspector_common::InterceptEvent::COUNT);
    if events != ours {
        log::warn!(
            "{}: {events} intercept events, an older version's; replaced by {ours} (their counts start again)",
            path.display()
        );
        remove_pin(&path)?;
    }
    Ok(())
}

/// Removes servers' counts pinned by a version that kept them in a hash
/// by address, not in an array at each server's index (reused, they would
/// fail the verifier), or in an array of another shape (a server past its
/// end would count nowhere). The counts start again from zero and the
/// sweeper's next pass recounts them from the flow table.
fn drop_stale_server_counts(pin_dir: &Path) -> Result<()> {
    let path = super::bpffs::map_path(pin_dir, inspector_common::maps::SERVER_CONNS);
    let Some(info) = pinned_info(&path)? else {
        return Ok(());
    };
    let ours = matches!(info.map_type(), Ok(aya::maps::MapType::Array))
        && info.max_entries() == inspector_common::MAX_SERVERS
        && info.value_size() as usize == std::mem::size_of::<inspector_common::ConnCounts>();
    if !ours {
        log::warn!(
            "{}: an older version's servers' counts; replaced (the sweeper recounts them)",
            path.display()
        );
        remove_pin(&path)?;
    }
    Ok(())
}

/// The info of the map pinned at `path`, if one is.
fn pinned_info(path: &Path) -> Result<Option<aya::maps::MapInfo>> {
    let Ok(map) = aya::maps::MapData::from_pin(path) else {
        return Ok(None);
    };
    let info = map
        .info()
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(info))
}

fn remove_pin(path: &Path) -> Result<()> {
    std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))
}

pub fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    Ok(ebpf
        .program_mut(programs::XDP_CLASSIFY)
        .context("the object has no XDP classifier")?
        .try_into()?)
}

/// How to attach XDP: `Auto` tries native (driver) mode and falls back to
/// generic mode, saying so.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    Auto,
    Native,
    Generic,
}

/// Attaches the classifier to `iface` and tells it the mode it got there
/// (TCP intercept writes its replies' checksums by it); returns the mode.
pub fn attach_xdp(ebpf: &mut Ebpf, iface: &str, mode: AttachMode) -> Result<&'static str> {
    let mode = attach_in(ebpf, iface, mode)?;
    write_config(ebpf, iface, mode == "generic")?;
    Ok(mode)
}

/// Records in the program's settings map whether it runs in generic mode
/// on `iface`.
fn write_config(ebpf: &mut Ebpf, iface: &str, generic: bool) -> Result<()> {
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: a valid C string; the call only reads it.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface named {iface} in this network namespace");
    }
    let map = ebpf
        .map_mut(XDP_CONFIG_MAP)
        .context("the object has no XDP settings map")?;
    let mut config: HashMap<_, u32, XdpConfig> = HashMap::try_from(map)?;
    let value = XdpConfig {
        generic: u32::from(generic),
        _pad: 0,
    };
    config
        .insert(ifindex, value, 0)
        .with_context(|| format!("writing the XDP settings of {iface}"))
}

fn attach_in(ebpf: &mut Ebpf, iface: &str, mode: AttachMode) -> Result<&'static str> {
    let xdp = xdp_program(ebpf)?;
    let attempt = |xdp: &mut Xdp, mode| xdp.attach(iface, mode).map(|_| ());
    match mode {
        AttachMode::Native => attempt(xdp, XdpMode::Driver)
            .map_err(|e| explain(e, iface))
            .map(|()| "native"),
        AttachMode::Generic => attempt(xdp, XdpMode::Skb)
            .map_err(|e| explain(e, iface))
            .map(|()| "generic"),
        AttachMode::Auto => match attempt(xdp, XdpMode::Driver) {
            Ok(()) => Ok("native"),
            Err(e) if is_busy(&e) => Err(explain(e, iface)),
            Err(e @ ProgramError::UnknownInterface { .. }) => Err(explain(e, iface)),
            Err(native_err) => {
                log::warn!(
                    "{iface}: native XDP not available ({native_err}); falling back to generic XDP, which runs later in the stack and is slower"
                );
                attempt(xdp, XdpMode::Skb)
                    .map_err(|e| explain(e, iface))
                    .map(|()| "generic")
            }
        },
    }
}

fn is_busy(e: &ProgramError) -> bool {
    let io = match e {
        ProgramError::SyscallError(s) => Some(&s.io_error),
        _ => None,
    };
    io.and_then(|e| e.raw_os_error()) == Some(libc::EBUSY)
}

fn explain(e: ProgramError, iface: &str) -> anyhow::Error {
    if is_busy(&e) {
        return anyhow::anyhow!(
            "{iface} already has an XDP program attached (another `inspector run`, or another tool: see `ip link show {iface}`)"
        );
    }
    if let ProgramError::UnknownInterface { .. } = e {
        return anyhow::anyhow!("no interface named {iface} in this network namespace");
    }
    anyhow::Error::new(e).context(format!("attaching XDP to {iface}"))
}

/// Refuses interface names the kernel would never accept, before any work.
pub fn check_iface_name(iface: &str) -> Result<()> {
    if iface.is_empty() || iface.len() >= libc::IFNAMSIZ || iface.contains(['/', ' ', '\0']) {
        bail!("`{iface}` is not a valid interface name");
    }
    Ok(())
}
