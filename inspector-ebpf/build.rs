use which::which;

/// Rebuild the eBPF object when bpf-linker changes (it links the object, so a
/// new linker can change the output while no source changed).
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
