//! The steering programs (TC clsact ingress): attach, configure, detach.
//! `inspector_steer` runs on the inspected interfaces; `inspector_steer_return`
//! on the interfaces facing the servers, when the proxy connects from the
//! clients' addresses and those interfaces are not inspected themselves
//! (it marks the servers' answers to the engine's connections and nothing
//! else). Their links are pinned in the pin directory (`steer-<iface>`,
//! `steer-return-<iface>`), so they outlive a daemon that is killed: with
//! `fail = "closed"` the SYNs of new flagged flows are then refused (RST); with
//! `fail = "open"` they go to the server uninspected (see `inspector-ebpf/src/steer.rs`). A clean
//! stop removes the link.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::{
        SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
    },
};
use inspector_common::{
    FAIL_CLOSED, FAIL_OPEN, HEARTBEAT_MAP, STEER_CONFIG_MAP, SteerConfig, programs,
};

use crate::config::FailMode;

/// The start of a steering link pin's name: `steer-<iface>`.
const LINK_PREFIX: &str = "steer-";

pub fn link_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("{LINK_PREFIX}{iface}"))
}

/// The pin of `inspector_steer_return`'s link on `iface`.
pub fn return_link_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("{LINK_PREFIX}return-{iface}"))
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    Ok(ebpf
        .program_mut(name)
        .with_context(|| format!("the object has no program {name}"))?
        .try_into()?)
}

/// Verifies the programs and writes their settings.
pub fn load(ebpf: &mut Ebpf, fail: FailMode) -> Result<()> {
    program(ebpf, programs::TC_STEER)?
        .load()
        .context("verifying the steering program")?;
    program(ebpf, programs::TC_STEER_RETURN)?
        .load()
        .context("verifying the return steering program")?;
    set_fail(ebpf, fail)
}

/// Writes the steering settings: `fail`, with the engine running (a reload
/// calls this again with the new policy's `fail`).
pub fn set_fail(ebpf: &mut Ebpf, fail: FailMode) -> Result<()> {
    let mut config: Array<_, SteerConfig> = Array::try_from(
        ebpf.map_mut(STEER_CONFIG_MAP)
            .context("the object has no steering settings map")?,
    )?;
    let fail = match fail {
        FailMode::Open => FAIL_OPEN,
        FailMode::Closed => FAIL_CLOSED,
    };
    config.set(0, SteerConfig { fail, engine: 1 }, 0)?;
    Ok(())
}

/// The proxy's heartbeat in the kernel (see `inspector-ebpf/src/steer/liveness.rs`):
/// the steering marks new sessions only while it is at most
/// [`inspector_common::HEARTBEAT_STALE_NS`] old.
pub struct Heartbeat(Array<MapData, u64>);

impl Heartbeat {
    /// Takes the heartbeat map out of the loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let map = ebpf
            .take_map(HEARTBEAT_MAP)
            .context("the object has no heartbeat map")?;
        Ok(Self(Array::try_from(map)?))
    }

    /// Writes now (CLOCK_MONOTONIC, `bpf_ktime_get_ns`'s clock).
    pub fn beat(&mut self) -> Result<()> {
        self.0.set(0, super::sweeper::monotonic_ns(), 0)?;
        Ok(())
    }
}

/// Attaches to `iface`'s ingress (TCX) and pins the link, replacing the
/// link a killed daemon left.
pub fn attach(ebpf: &mut Ebpf, iface: &str, pin_dir: &Path) -> Result<()> {
    attach_program(ebpf, programs::TC_STEER, iface, &link_pin(pin_dir, iface))
}

/// Attaches `inspector_steer_return` to `iface`'s ingress, as [`attach`].
pub fn attach_return(ebpf: &mut Ebpf, iface: &str, pin_dir: &Path) -> Result<()> {
    attach_program(
        ebpf,
        programs::TC_STEER_RETURN,
        iface,
        &return_link_pin(pin_dir, iface),
    )
}

fn attach_program(ebpf: &mut Ebpf, name: &str, iface: &str, pin: &Path) -> Result<()> {
    detach(pin)?;
    let prog = program(ebpf, name)?;
    let id = prog
        .attach(iface, TcAttachType::Ingress)
        .with_context(|| format!("attaching {name} to {iface}"))?;
    let link: FdLink = prog.take_link(id)?.try_into()?;
    link.pin(pin)
        .with_context(|| format!("pinning the steering link at {}", pin.display()))?;
    Ok(())
}

/// Detaches every steering link pinned in `pin_dir` (a killed daemon's).
pub fn detach_all(pin_dir: &Path) -> Result<()> {
    let Ok(dir) = std::fs::read_dir(pin_dir) else {
        return Ok(());
    };
    for entry in dir.flatten() {
        if entry.file_name().to_string_lossy().starts_with(LINK_PREFIX) {
            detach(&entry.path())?;
        }
    }
    Ok(())
}

/// Removes a pinned link (detaching the program); absent is fine.
pub fn detach(pin: &Path) -> Result<()> {
    if !pin.exists() {
        return Ok(());
    }
    let link = PinnedLink::from_pin(pin)
        .with_context(|| format!("opening the pinned link {}", pin.display()))?;
    link.unpin()
        .with_context(|| format!("unpinning {}", pin.display()))?;
    Ok(())
}
