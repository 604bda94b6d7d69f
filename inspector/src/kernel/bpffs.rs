//! The bpffs directory where the daemon pins its maps, so that the CLI can
//! reach them while it runs and they outlive a restart.

use std::{
    ffi::CString,
    fs,
    io::ErrorKind,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use aya::maps::{Map, MapData};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/inspector";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Makes sure `pin_dir` sits on a bpffs and exists. bpffs is not mounted at
/// boot on every distribution: when the parent is plain sysfs/tmpfs, mount a
/// bpffs on `/sys/fs/bpf` first (the conventional place).
pub fn prepare(pin_dir: &Path) -> Result<()> {
    let parent = pin_dir
        .parent()
        .with_context(|| format!("pin directory {} has no parent", pin_dir.display()))?;
    if !is_bpffs(parent)? {
        if parent != Path::new("/sys/fs/bpf") {
            bail!(
                "{} is not on a bpf filesystem; mount one there (mount -t bpf bpf DIR) or use --pin-dir under /sys/fs/bpf",
                parent.display()
            );
        }
        mount_bpffs(parent)?;
        log::info!("mounted bpffs on {}", parent.display());
    }
    fs::create_dir_all(pin_dir)
        .with_context(|| format!("creating pin directory {}", pin_dir.display()))
}

fn is_bpffs(path: &Path) -> Result<bool> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: statfs writes into the zeroed struct we own; the path is a
    // valid NUL-terminated string.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() == ErrorKind::NotFound {
            return Ok(false);
        }
        return Err(err).with_context(|| format!("statfs {}", path.display()));
    }
    Ok(stat.f_type as i64 == BPF_FS_MAGIC)
}

fn mount_bpffs(target: &Path) -> Result<()> {
    fs::create_dir_all(target)?;
    let c_target = CString::new(target.as_os_str().as_bytes())?;
    // SAFETY: all arguments are valid NUL-terminated strings or null.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c_target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mounting bpffs on {}", target.display()));
    }
    Ok(())
}

/// Path of a pinned map.
pub fn map_path(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join(name)
}

/// Opens a map the daemon pinned, with an error that tells the operator what
/// is wrong when it is not there.
pub fn open_map(pin_dir: &Path, name: &str) -> Result<Map> {
    let path = map_path(pin_dir, name);
    if !path.exists() {
        bail!(
            "no pinned map {} (is `inspector run` active, or has it run once with --pin-dir {}?)",
            path.display(),
            pin_dir.display()
        );
    }
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("reading map {}", path.display()))
}

/// Removes the pins in `names` and then the directory if it is empty.
/// Returns the pins that existed.
/// Removes everything the daemon pins in `pin_dir`: steering links a killed
/// daemon left, then the maps (returned), then the directory.
pub fn unload(pin_dir: &Path) -> Result<Vec<PathBuf>> {
    super::steer::detach_all(pin_dir)?;
    remove_pins(pin_dir, &inspector_common::maps::ALL)
}

/// A pin directory of one run (a test, a benchmark): prepared when made,
/// unloaded when dropped.
pub struct OwnedPinDir(PathBuf);

impl OwnedPinDir {
    pub fn new(path: PathBuf) -> Result<Self> {
        prepare(&path)?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for OwnedPinDir {
    fn drop(&mut self) {
        let _ = unload(&self.0);
        // And the live exemptions it saved under the default state dir.
        let store = super::exempt_store::Store::for_pin_dir(
            Path::new(super::exempt_store::DEFAULT_STATE_DIR),
            &self.0,
        );
        let _ = fs::remove_file(store.path());
        let _ = fs::remove_file(store.path().with_extension("json.lock"));
    }
}

pub fn remove_pins(pin_dir: &Path, names: &[&str]) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for name in names {
        let path = map_path(pin_dir, name);
        match fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    match fs::remove_dir(pin_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
            log::warn!("{} holds other files; left in place", pin_dir.display())
        }
        Err(e) => return Err(e).with_context(|| format!("removing {}", pin_dir.display())),
    }
    Ok(removed)
}
